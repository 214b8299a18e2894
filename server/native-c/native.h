/*
 * native.h: what the files of the native server share (server/_native.c includes them all, in order,
 * into one translation unit).  The protocol numbers (server/protocol.py, checked against it at import by
 * server/native.py), the lock state (Hold, Request, KeyState: server/locks.py; Core: the state of
 * server/core.py's LockCore), the wait-for graph (Graph, Node: server/deadlock.py's WaitGraph), replies
 * and the special replies whose texts Python makes (server/events.py), the event record (server/trace.py's
 * input), and the service thread's state: its lock, the channels and the items handed to Python
 * (server/native_loop.py).
 */
#ifndef MPILOCK_NATIVE_H
#define MPILOCK_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* -- protocol (checked against server/protocol.py by server/native.py) ----------------------- */
enum { OP_READ = 1, OP_WRITE, OP_RELEASE, OP_CANCEL, OP_FENCE_BEGIN, OP_FENCE_END, OP_FENCE_WAIT, OP_COLLECT,
       OP_CLOSE, OP_STATS, OP_BOUNDED, OP_DOWNGRADE, OP_SITE, OP_HELLO, OP_LOCKS };
enum { R_GRANTED = 1, R_DENIED, R_CANCELLED, R_FENCE_DONE, R_PAYLOAD, R_CLOSED, R_ERROR, R_REFUSED, R_DEADLOCK };
enum { F_TRY = 1, F_UPGRADE = 2, F_MULTI = 4, F_KEYS_IN_PAYLOAD = 8 };
enum { TAG_REQUEST = 11, TAG_REPLY = 12 };
#define HEADER_WORDS 7
#define HEADER_BYTES (8 * HEADER_WORDS)
#define MAX_MESSAGE 256
enum { M_READ = 0, M_WRITE = 1, M_SLOT = 2 };
#define SLOT_SHIFT 40 /* a request's seq is (slot << SLOT_SHIFT) | n: the thread of the rank that sent it */

/* Protocol errors (texts made by server/native_core.py from the kind and its data). */
enum { E_NONE = 0, E_MEMBER, E_CLOSED, E_UNKNOWN_OP, E_BOUNDED_ARGS, E_DOWNGRADE, E_AWAITING, E_HOLDS, E_TWO_MODES,
       E_DUPLICATE, E_UPGRADE, E_RELEASE, E_CLOSED_TWICE, E_SEQ };
enum { S_NONE = 0, S_ERROR, S_REFUSED, S_DEADLOCK };

static void die(const char *what)
{
    fprintf(stderr, "mpilock native server: %s; aborting the MPI job\n", what);
    fflush(stderr);
    int up = 0;
    MPI_Initialized(&up);
    if (up)
        MPI_Abort(MPI_COMM_WORLD, 70);
    abort();
}

#define GROW(ptr, n, cap)                                                                  \
    do {                                                                                   \
        if ((size_t)(n) >= (size_t)(cap)) {                                                \
            size_t grown_ = (cap) ? 2 * (size_t)(cap) : 4;                                 \
            void *p_ = realloc((ptr), grown_ * sizeof(*(ptr)));                            \
            if (!p_)                                                                       \
                die("out of memory");                                                      \
            (ptr) = p_;                                                                    \
            (cap) = grown_;                                                                \
        }                                                                                  \
    } while (0)

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* -- data --------------------------------------------------------------------------------------- */
typedef struct Hold {
    int64_t seq, site;
    double since;
    int has_before;
    int64_t bseq, bsite;
    double bsince;
} Hold;

typedef struct Core Core;
typedef struct KeyState KeyState;

typedef struct Request {
    Core *core;
    int rank, mode, nkeys;
    int64_t seq, site;
    double since, priority;
    KeyState **keys;
} Request;

struct KeyState {
    uint8_t *key;
    size_t len;
    uint64_t hash;
    KeyState *hnext, *prev, *next;
    int64_t limit;
    int nreaders, capr;
    int *rranks;
    Hold *rholds;
    int writer;
    Hold write_hold;
    Request **writers;
    int nwriters, capw;
    Request **wreaders;
    int nwreaders, capwr;
    int early;
};

typedef struct Member {
    Core *core;
    int rank;
} Member;

typedef struct Node {
    int64_t world, token;
    Member *m;
    int nm, capm;
    int at;             /* index in Graph.nodes */
    struct Node *hnext; /* next in its hash bucket */
} Node;

typedef struct KeyRef {
    const uint8_t *data;
    size_t len;
} KeyRef;

typedef struct Reordered {
    Core *core;
    uint8_t *key;
    size_t len;
} Reordered;

typedef struct Graph {
    Node **nodes; /* insertion order of WaitGraph._members; NULL where a node left (skipped, compacted now and then) */
    int n, cap, dead;
    Node **buckets; /* (world, token) -> node: a hash table, so that a join or a hello is O(1) */
    size_t nbuckets, count;
    double arrivals;
    Reordered *re;
    int nre, capre;
    int refs;
} Graph;

typedef struct Reply {
    int rank, code;
    int64_t seq;
} Reply;

typedef struct Out {
    Reply *r;
    int n, cap;
} Out;

/* One edge of a deadlock, with what describe_cycle needs to name it. */
typedef struct CycleEdge {
    uint64_t core_uid;
    int waiter, target, queued;
    int waiter_rank, waiter_slot; /* the MPI rank and thread slot of the waiting holder */
    int64_t waiter_world;
    uint8_t *key;
    size_t len;
    int hold_mode;
    int64_t hold_site;
    int wait_mode;
    int64_t wait_site;
} CycleEdge;

typedef struct Special {
    int kind;  /* S_* */
    int error; /* E_* */
    int key;   /* index of the key an error or refusal names, -1 if none */
    int64_t a, b;
    int *users;
    int nusers;
    CycleEdge *cycle;
    int ncycle;
} Special;

typedef struct Events {
    uint8_t *buf;
    size_t n, cap;
    size_t count;
} Events;

typedef struct Channel Channel;

/* A holder is a thread of a rank: (rank, slot), slot from the request's seq.  Holder ids are dense:
 * slot 0 of rank r is r, other slots get ids from size on as first seen (server/holders.py).  The
 * per-holder arrays (waiting, held, nodes, hrank, hslot) have caph entries; per rank: member, closing. */
struct Core {
    uint64_t uid;
    int size, nmembers;
    char *member;
    KeyState **buckets;
    size_t nbuckets, count;
    KeyState *first, *last;
    int nh, caph;
    int *hrank, *hslot; /* holder -> MPI rank (where its replies go), thread slot */
    int64_t *hkeys;     /* rank | slot << SLOT_SHIFT -> holder (hvals), open addressing, slots > 0 only */
    int *hvals;         /* -1: empty */
    size_t hcap, hcount;
    Request **waiting;
    int64_t *held;
    Node **nodes;
    Graph *graph;
    int64_t *closing_seq;
    char *closing;
    int nclosing, closed, joined;
    Reply *outbox;
    int noutbox, capout;
    int record;
    Events ev;
    Channel *channel;
    int refs; /* the Python object and an attached channel */
};

static uint64_t g_uids = 0;

/* -- the service loop ------------------------------------------------------------------------------- */
/* Recursive: building Python objects under it (snapshot) may run the garbage collector, which may free
 * another core, which takes it again. */
static pthread_mutex_t g_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static pthread_cond_t g_items_ready = PTHREAD_COND_INITIALIZER;
static pthread_cond_t g_drained = PTHREAD_COND_INITIALIZER;

typedef struct SendSlot {
    int64_t words[HEADER_WORDS];
    int rank; /* the reply's client: poked again once the send has completed */
} SendSlot;

struct Channel {
    int id;
    Core *core;
    MPI_Comm comm;
    MPI_Request recv;
    MPI_Status status;
    uint8_t buf[MAX_MESSAGE];
    MPI_Request *reqs;
    SendSlot **slots;
    int nsends, capsends;
    int *deferred;
    int finished, drain_asked;
    int wakeable; /* every rank of the channel can reach the wake word (same node, wake-up on) */
    uint32_t *words; /* the clients' words (see "the wake word"), or NULL */
    int nwords;
    PyObject *words_owner; /* the Words object that maps them (kept alive while the channel lives) */
    Channel *next;
};

enum { I_MESSAGE = 1, I_SPECIAL, I_DRAIN, I_FINISHED };

typedef struct Item {
    int kind, channel, rank, op;
    int64_t seq;
    uint8_t *data; /* I_MESSAGE: the message; I_SPECIAL: the keys, packed */
    int count, truncated; /* I_MESSAGE: bytes received; whether the message was longer than MAX_MESSAGE */
    KeyRef *keys;
    int nkeys;
    Special sp;
    struct Item *next;
} Item;

static Channel *g_channels = NULL;
static int g_next_channel = 1;
static Item *g_items = NULL, **g_items_tail = &g_items;
static int g_thread_running = 0, g_thread_joinable = 0;
static int g_paused = 0; /* MPI_Finalize has begun: one thread calls MPI from now on, the service thread stays out */
static volatile int g_want = 0; /* Python threads waiting for g_lock: the service thread lets them in */
static pthread_t g_thread;
static double g_spin = 0.0002, g_shortest = 10e-6, g_hot = 0.005, g_longest = 0.0002, g_idle_after = 0.05,
              g_idle_longest = 0.001;
static size_t g_soft_events = 4096, g_hard_events = 65536;
static SendSlot *g_free_slots[256];
static int g_nfree_slots = 0;
static long g_wakeups = 0;

#endif /* MPILOCK_NATIVE_H */
