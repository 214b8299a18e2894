/*
 * wake.c: the wake word (a futex word in POSIX shared memory that clients poke when the server sleeps)
 * and the service thread's backoff between polls.  Mirrors server/wake.py and server/backoff.py.
 */
#include "native.h"

/* -- the wake word -------------------------------------------------------------------------------------
 * One 32-bit word in POSIX shared memory per serving process (server/wake.py names and creates it).  The
 * service thread, idle past its hot window, stores 1 ("asleep"), polls its channels once more, and sleeps
 * on the word with FUTEX_WAIT for at most a cap.  A client on the same node that has just sent a request
 * loads the word and, only if it reads 1, swaps in 0 and calls FUTEX_WAKE: a client pays the system call
 * only when the server sleeps.  Requests stay MPI messages; the word is a hint, never a lock: a wake-up that
 * is missed costs at most the cap.  None is missed in the usual order of things: the server stores 1 before
 * its last poll, a client sends before it loads (with a full fence between), so either the poll sees the
 * request or the client sees the 1. */
#define WAKE_BYTES 64
static uint32_t *g_wake = NULL; /* this process's word, once it serves */
static long g_sleeps = 0, g_woken = 0; /* futex sleeps of a server thread; of them, ended by a client */
static double g_wake_longest = 0.1; /* cap of a futex sleep when every client of every channel can wake us */

static uint32_t *wake_map_bytes(const char *name, int create, size_t bytes)
{
    int fd = shm_open(name, create ? O_RDWR | O_CREAT | O_EXCL : O_RDWR, 0600);
    if (fd < 0)
        return NULL;
    if (create && ftruncate(fd, (off_t)bytes) != 0) {
        int saved = errno;
        close(fd);
        shm_unlink(name);
        errno = saved;
        return NULL;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int saved = errno;
    close(fd);
    if (p == MAP_FAILED) {
        if (create)
            shm_unlink(name);
        errno = saved;
        return NULL;
    }
    return (uint32_t *)p;
}

static uint32_t *wake_map(const char *name, int create)
{
    return wake_map_bytes(name, create, WAKE_BYTES);
}

static long futex(uint32_t *word, int op, uint32_t value, const struct timespec *timeout)
{
    return syscall(SYS_futex, word, op, value, timeout, NULL, 0);
}

/* A client has sent a request: wake the server if it sleeps.  Returns whether it did. */
static int wake_poke(uint32_t *word)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the request's stores before the load of the word */
    if (__atomic_load_n(word, __ATOMIC_RELAXED) != 1 || __atomic_exchange_n(word, 0, __ATOMIC_SEQ_CST) != 1)
        return 0;
    futex(word, FUTEX_WAKE, INT_MAX, NULL);
    return 1;
}

/* Sleep on the word (armed to 1 before the caller's last poll) for at most seconds; disarm it.
 * Returns whether a client woke us (it swapped in the 0). */
static int wake_sleep_on(uint32_t *word, double seconds)
{
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    futex(word, FUTEX_WAIT, 1, &ts);
    return __atomic_exchange_n(word, 0, __ATOMIC_SEQ_CST) == 0;
}

static int wake_sleep(uint32_t *word, double seconds) /* a server thread's sleep, counted */
{
    int woken = wake_sleep_on(word, seconds);
    __atomic_add_fetch(&g_sleeps, 1, __ATOMIC_RELAXED);
    if (woken)
        __atomic_add_fetch(&g_woken, 1, __ATOMIC_RELAXED);
    return woken;
}

/* A channel's client words: one per rank (a cache line each) in a segment the master makes for the channel.
 * A client waiting for a reply sleeps on its word; the server pokes it after sending the client a reply. */
#define WORD_STRIDE 16 /* uint32_t: 64 bytes */

static void poke_client(Channel *ch, int rank)
{
    if (ch->words && rank >= 0 && rank < ch->nwords)
        wake_poke(&ch->words[(size_t)rank * WORD_STRIDE]);
}

/* Wake our own server thread (pause, close): it must look at the world now, not after its sleep. */
static void wake_self(void)
{
    if (g_wake) {
        __atomic_store_n(g_wake, 0, __ATOMIC_SEQ_CST);
        futex(g_wake, FUTEX_WAKE, INT_MAX, NULL);
    }
}

/* The cap of a futex sleep: long if every client of every open channel can wake us, else the idle cap
 * (a client on another node cannot reach the word: the server must come and look).  g_lock held. */
static double sleep_cap(void)
{
    for (Channel *ch = g_channels; ch; ch = ch->next)
        if (!ch->finished && !ch->wakeable)
            return g_idle_longest;
    return g_wake_longest;
}

/* Join a service thread that has left its loop (g_lock held; it takes g_lock no more). */
static void reap_thread(void)
{
    if (g_thread_joinable && !g_thread_running) {
        pthread_join(g_thread, NULL);
        g_thread_joinable = 0;
    }
}

/* The backoff: after a request, poll in a sched_yield loop for g_spin seconds, then every g_shortest
 * seconds until g_hot after it (a client's think time: its next request is seen within microseconds),
 * then sleep twice as long each time up to g_longest, and up to g_idle_longest once g_idle_after has
 * passed without a request (the first grant after idling waits at most that long). */
static void *native_thread(void *unused)
{
    (void)unused;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* sleeps of microseconds, not the default 50 us more */
    sigset_t all; /* signals are the application's: they go to its threads, never interrupt this one's MPI calls */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    double last_work = monotonic(), sleep = g_shortest, cap = g_idle_longest;
    int armed = 0; /* the wake word says "asleep"; one more poll before the futex sleep */
    for (;;) {
        int busy = 0, open = 0, sending = 0;
        pthread_mutex_lock(&g_lock);
        while (over_hard_bound() && !g_paused) { /* never unbounded memory: wait for Python to drain */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 1000000;
            if (until.tv_nsec >= 1000000000) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&g_drained, &g_lock, &until);
        }
        if (g_paused) {
            g_thread_running = 0;
            pthread_mutex_unlock(&g_lock);
            break;
        }
        for (Channel *ch = g_channels; ch; ch = ch->next) {
            if (ch->finished)
                continue;
            open = 1;
            for (int i = 0; i < 16 && channel_poll(ch); i++) { /* serve what has arrived, up to a bound */
                busy = 1;
                if (ch->finished)
                    break;
            }
            if (!ch->finished && ch->nsends) { /* progress our replies: no sleep while one is still going */
                channel_reap(ch);
                sending |= ch->nsends > 0;
            }
        }
        if (!open) {
            g_thread_running = 0;
            pthread_mutex_unlock(&g_lock);
            if (armed)
                __atomic_store_n(g_wake, 0, __ATOMIC_SEQ_CST);
            break;
        }
        if (g_wake)
            cap = sleep_cap();
        pthread_mutex_unlock(&g_lock);
        g_wakeups++;
        if (g_want)
            sched_yield(); /* a Python thread waits for the lock: let it in */
        double now = monotonic();
        if (busy) {
            last_work = now;
            sleep = g_shortest;
            if (armed) {
                __atomic_store_n(g_wake, 0, __ATOMIC_SEQ_CST);
                armed = 0;
            }
            continue;
        }
        double since = now - last_work;
        if (since < g_spin) {
            sched_yield();
            continue;
        }
        if (since < g_hot) {
            nap(g_shortest);
            continue;
        }
        if (armed && sending) { /* not asleep while a reply is still going out: clients need not poke */
            __atomic_store_n(g_wake, 0, __ATOMIC_SEQ_CST);
            armed = 0;
        }
        if (g_wake && !sending) { /* idle: sleep until a client wakes us, or the cap */
            if (!armed) {
                __atomic_store_n(g_wake, 1, __ATOMIC_SEQ_CST);
                armed = 1;
                continue; /* a request sent before the store was seen must be seen by this poll */
            }
            if (wake_sleep(g_wake, cap)) { /* a client poked: poll hot, its request may take more than one poll */
                last_work = monotonic();
                sleep = g_shortest;
            }
            armed = 0;
            continue;
        }
        nap(sleep);
        double most = since > g_idle_after ? g_idle_longest : g_longest;
        sleep = sleep * 2 < most ? sleep * 2 : most;
    }
    return NULL;
}
