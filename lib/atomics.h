/* The only way lib/ touches a word another process may write: explicit
 * memory orders on the __atomic builtins (liburing's barrier.h idea).  Also
 * the two ways a ring producer writes memory another CPU reads next: the
 * write prefetch and the non-temporal copy of big messages; and the read
 * prefetch of a kv slot. */
#ifndef MMIPC_ATOMICS_H
#define MMIPC_ATOMICS_H

#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#define mmipc__load_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define mmipc__load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define mmipc__store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define mmipc__store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define mmipc__fetch_add(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define mmipc__cas(p, expp, desired)                                                                                   \
    __atomic_compare_exchange_n((p), (expp), (desired), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#define mmipc__fence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define mmipc__fence_acquire() __atomic_thread_fence(__ATOMIC_ACQUIRE)

/* A counter only its lock holder writes: a plain increment, but through
 * atomics so lock-free readers (stat) never see a torn value. */
#define mmipc__bump(p) mmipc__store_relaxed((p), mmipc__load_relaxed(p) + 1)

static inline void mmipc__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

/* Fetch a cache line for reading.  A hint: never faults.  PREFETCHT0 by
 * hand on x86-64: GCC 12 counts __builtin_prefetch as free of side effects
 * and deleted every call of kv's prefetch_body, a helper of nothing but
 * prefetches.  Elsewhere the builtin, tied to an empty volatile asm (no
 * instruction) so that a helper built on it is never judged side-effect
 * free. */
static inline void mmipc__prefetch_read(const void *p)
{
#if defined(__x86_64__)
    __asm__ __volatile__("prefetcht0 %0" ::"m"(*(const char *)p));
#else
    __builtin_prefetch(p, 0, 3);
    __asm__ __volatile__("" ::"r"(p));
#endif
}

/* Fetch a cache line for writing (exclusive), so a later store to it does
 * not wait for another CPU to give it up.  A hint: never faults.  PREFETCHW
 * by hand on x86-64 (compilers emit it only under -mprfchw; CPUs without it
 * treat it as a prefetch or a no-op); elsewhere what the compiler has. */
static inline void mmipc__prefetch_write(const void *p)
{
#if defined(__x86_64__) || defined(__PRFCHW__)
    __asm__ __volatile__("prefetchw %0" ::"m"(*(const char *)p));
#else
    __builtin_prefetch(p, 1, 3);
    __asm__ __volatile__("" ::"r"(p)); /* kept: see mmipc__prefetch_read */
#endif
}

/* Messages from this length up are copied into the ring past the cache. */
#define MMIPC__STREAM_MIN ((size_t)512 * 1024)

/* Copy n bytes with non-temporal stores on x86-64, then order them before
 * any later store (SFENCE: a release store alone does not).  With a message
 * bigger than a CPU's L2 the consumer then meets the lines in memory
 * instead of pulling each one from the producer's cache while the producer
 * writes the next: 1.6-1.8x the bandwidth of a 1 MiB stream between the two
 * CPUs here (README, Rings).  Elsewhere a plain memcpy. */
static inline void mmipc__copy_stream(void *dst, const void *src, size_t n)
{
#if defined(__x86_64__)
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t head = (size_t)(-(uintptr_t)d & 15);
    if (head > n)
        head = n;
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    for (; n >= 64; n -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32)), e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    memcpy(d, s, n);
    _mm_sfence();
#else
    memcpy(dst, src, n);
#endif
}

/* How a ring producer copies a message in: past the cache from
 * MMIPC__STREAM_MIN bytes on, otherwise a plain memcpy. */
static inline void mmipc__copy_msg(void *dst, const void *src, size_t n)
{
    if (n >= MMIPC__STREAM_MIN)
        mmipc__copy_stream(dst, src, n);
    else if (n != 0)
        memcpy(dst, src, n);
}

#endif
