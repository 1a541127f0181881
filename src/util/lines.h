/* lines.h - the files an operator writes by hand (--config, --api-keys):
 * one entry per line, '#' starts a comment, blank lines are skipped. */
#ifndef DC_LINES_H
#define DC_LINES_H

#include <stddef.h>
#include <stdio.h>

/* The next entry of f in buf (n bytes): its comment cut, surrounding
 * whitespace trimmed, never empty; NULL at the end. *lineno counts the
 * lines read, for error messages. */
char *lines_next(FILE *f, char *buf, size_t n, int *lineno);

#endif
