/* test_quota.c - per-user limits (util/quota.h): takes up to the limit,
 * gives back, forgets items the alive callback says are gone, and never
 * overshoots under concurrent takes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "util/quota.h"

static void takes_up_to_the_limit_per_user(void **state) {
    (void)state;
    quota *q = quota_new(NULL, NULL);
    assert_true(quota_take(q, "ann", "a1", 2));
    assert_true(quota_take(q, "ann", "a2", 2));
    assert_false(quota_take(q, "ann", "a3", 2));
    assert_true(quota_take(q, "bob", "b1", 2)); /* users are counted apart */
    assert_int_equal(quota_count(q, "ann"), 2);
    quota_give(q, "ann", "a1");
    assert_int_equal(quota_count(q, "ann"), 1);
    assert_true(quota_take(q, "ann", "a3", 2));
    quota_give(q, "ann", "nope"); /* an item never taken changes nothing */
    quota_give(q, "carl", "a2");
    assert_int_equal(quota_count(q, "ann"), 2);
    assert_true(quota_take(q, "ann", "a4", 0)); /* 0: no limit, and nothing kept */
    assert_int_equal(quota_count(q, "ann"), 2);
    quota_free(q);
}

/* Items whose name starts with "gone" no longer exist. */
static int asked;
static bool alive(void *ud, const char *item) {
    (void)ud;
    asked++;
    return strncmp(item, "gone", 4) != 0;
}

static void at_the_limit_forgets_what_is_gone(void **state) {
    (void)state;
    quota *q = quota_new(alive, NULL);
    asked = 0;
    assert_true(quota_take(q, "ann", "live1", 3));
    assert_true(quota_take(q, "ann", "gone1", 3));
    assert_true(quota_take(q, "ann", "gone2", 3));
    assert_int_equal(asked, 0); /* below the limit nothing is asked */
    assert_true(quota_take(q, "ann", "live2", 3)); /* the two gone ones are forgotten */
    assert_int_equal(asked, 3);
    assert_int_equal(quota_count(q, "ann"), 2);
    assert_true(quota_take(q, "ann", "live3", 3));
    assert_false(quota_take(q, "ann", "live4", 3)); /* three live ones: full */
    quota_free(q);
}

/* The sweep of every item is the node's periodic upkeep (quota_sweep),
 * never part of a take: however large the table grows, a take below the
 * limit asks alive() nothing. */
static void the_full_sweep_is_upkeep_not_a_take(void **state) {
    (void)state;
    quota *q = quota_new(alive, NULL);
    asked = 0;
    char item[32];
    for (int i = 0; i < 1500; i++) {
        snprintf(item, sizeof item, "%s%d", i % 2 ? "gone" : "live", i);
        assert_true(quota_take(q, "ann", item, 100000));
    }
    assert_int_equal(asked, 0);
    assert_int_equal(quota_sweep(q), 750);
    assert_int_equal(asked, 1500);
    assert_int_equal(quota_count(q, "ann"), 750);
    assert_int_equal(quota_sweep(q), 0); /* not grown since: nothing asked */
    assert_int_equal(asked, 1500);
    quota_free(q);
}

#define THREADS 8
#define TRIES 200
static quota *shared;
static int won[THREADS];

static void *taker(void *arg) {
    int t = (int)(intptr_t)arg;
    char item[32];
    for (int i = 0; i < TRIES; i++) {
        snprintf(item, sizeof item, "t%d-%d", t, i);
        if (quota_take(shared, "ann", item, 5)) won[t]++;
    }
    return NULL;
}

static void concurrent_takes_never_overshoot(void **state) {
    (void)state;
    shared = quota_new(NULL, NULL);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, taker, (void *)(intptr_t)t);
    int total = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        total += won[t];
    }
    assert_int_equal(total, 5);
    assert_int_equal(quota_count(shared, "ann"), 5);
    quota_free(shared);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(takes_up_to_the_limit_per_user),
        cmocka_unit_test(at_the_limit_forgets_what_is_gone),
        cmocka_unit_test(the_full_sweep_is_upkeep_not_a_take),
        cmocka_unit_test(concurrent_takes_never_overshoot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
