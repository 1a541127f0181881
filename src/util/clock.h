/* clock.h - the two clocks: monotonic milliseconds for durations, wall-clock
 * milliseconds since the epoch for anything stored (TTL, last activity). */
#ifndef DC_CLOCK_H
#define DC_CLOCK_H

#include <stdint.h>

double clock_mono_ms(void);
int64_t clock_wall_ms(void);
void clock_sleep_ms(int ms);

#endif
