/* test_turn.c - every branch of the paper's turn protocol. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ctx/turn.h"

static void new_session(void **state) {
    (void)state;
    assert_int_equal(turn_decide(false, 0, 1, false), TURN_PROCEED);
    assert_int_equal(turn_decide(false, 0, 1, true), TURN_PROCEED);
    /* turn > 1 of an unknown session: it may still be replicating */
    assert_int_equal(turn_decide(false, 0, 2, false), TURN_WAIT);
    assert_int_equal(turn_decide(false, 0, 5, true), TURN_NOT_FOUND);
}

static void next_turn_proceeds(void **state) {
    (void)state;
    assert_int_equal(turn_decide(true, 1, 2, false), TURN_PROCEED);
    assert_int_equal(turn_decide(true, 8, 9, true), TURN_PROCEED);
}

static void repeated_or_old_turn_conflicts(void **state) {
    (void)state;
    assert_int_equal(turn_decide(true, 3, 3, false), TURN_CONFLICT);
    assert_int_equal(turn_decide(true, 3, 1, false), TURN_CONFLICT);
    assert_int_equal(turn_decide(true, 3, 2, true), TURN_CONFLICT);
}

static void behind_waits_then_goes_stale(void **state) {
    (void)state;
    assert_int_equal(turn_decide(true, 3, 5, false), TURN_WAIT);
    assert_int_equal(turn_decide(true, 3, 5, true), TURN_STALE);
    assert_int_equal(turn_decide(true, 0, 2, true), TURN_STALE);
}

static void extremes(void **state) {
    (void)state;
    assert_int_equal(turn_decide(true, UINT32_MAX - 1, UINT32_MAX, false), TURN_PROCEED);
    assert_int_equal(turn_decide(true, UINT32_MAX, UINT32_MAX, false), TURN_CONFLICT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(new_session),
        cmocka_unit_test(next_turn_proceeds),
        cmocka_unit_test(repeated_or_old_turn_conflicts),
        cmocka_unit_test(behind_waits_then_goes_stale),
        cmocka_unit_test(extremes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
