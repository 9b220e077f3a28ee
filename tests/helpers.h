/* Helpers shared by the Check suites: temporary files, forking helper
 * processes, and waiting for them with a deadline so a bug shows up as a
 * failure, never as a hung test run. */
#ifndef MMIPC_TEST_HELPERS_H
#define MMIPC_TEST_HELPERS_H

#include <check.h>
#include <stdint.h>
#include <sys/types.h>

#include "mmipc.h"

Suite *make_region_suite(void);
Suite *make_sync_suite(void);
Suite *make_ring_suite(void);
Suite *make_kv_suite(void);
Suite *make_hostile_suite(void);

/* A fresh private directory for this test process (created on first use,
 * removed with everything in it by th_cleanup()). */
const char *th_dir(void);
/* th_dir()/name in a static buffer rotated over 8 slots. */
const char *th_path(const char *name);
void th_cleanup(void);

uint64_t th_now_ms(void);
void th_sleep_ms(unsigned ms);

/* Fork a child that runs fn(arg) and _exit()s with its return value. */
pid_t th_spawn(int (*fn)(void *arg), void *arg);
/* Wait for pid at most timeout_ms; on timeout SIGKILL it and return -1.
 * Otherwise return its exit code, or 128+signal if it was killed. */
int th_wait(pid_t pid, int timeout_ms);
/* SIGKILL and reap. */
void th_kill(pid_t pid);

/* A liveness deadline stretched by CK_TIMEOUT_MULTIPLIER, and 20x under
 * valgrind (`make check-valgrind`), which slows every process down. */
int th_slow(int ms);
/* th_spawn, remembering the child so th_kill_all_tracked() (a teardown)
 * can end it if the test fails first (matters with CK_FORK=no). */
pid_t th_spawn_tracked(int (*fn)(void *arg), void *arg);
/* th_wait with th_slow(timeout_ms), forgetting the child. */
int th_reap(pid_t pid, int timeout_ms);
/* th_kill, forgetting the child. */
void th_kill_tracked(pid_t pid);
void th_kill_all_tracked(void);

/* Small deterministic PRNG (xorshift64*). */
uint64_t th_rand(uint64_t *state);

/* Open (creating) a region at th_path(name) with the given size, failing
 * the test on error. */
mmipc_region *th_region(const char *name, size_t size);

#endif
