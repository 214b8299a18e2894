/*
 * service.c: the MPI service thread and its channels: a persistent receive per channel tested under
 * g_lock, lock requests answered here without the GIL, replies sent with MPI_Isend, and everything else
 * handed to the Python thread as items.  Mirrors server/loop.py (Channel.poll, the Python loop) and the
 * C side of server/native_loop.py.
 */
#include "native.h"

static void push_item(Item *it)
{
    it->next = NULL;
    *g_items_tail = it;
    g_items_tail = &it->next;
    pthread_cond_signal(&g_items_ready);
}

static void mpi_check(int err, const char *what)
{
    if (err != MPI_SUCCESS)
        die(what);
}

static void poke_client(Channel *ch, int rank);

static void channel_send(Channel *ch, int rank, int code, int64_t seq)
{
    SendSlot *slot = g_nfree_slots ? g_free_slots[--g_nfree_slots] : xmalloc(sizeof(SendSlot));
    slot->words[0] = code;
    slot->words[1] = seq;
    slot->words[2] = 0;
    slot->words[3] = 0;
    slot->words[4] = 0;
    slot->words[5] = 0;
    slot->words[6] = 0;
    if (ch->nsends >= ch->capsends) {
        int cap = ch->capsends ? 2 * ch->capsends : 32;
        ch->slots = realloc(ch->slots, (size_t)cap * sizeof(SendSlot *));
        ch->reqs = realloc(ch->reqs, (size_t)cap * sizeof(MPI_Request));
        if (!ch->slots || !ch->reqs)
            die("out of memory");
        ch->capsends = cap;
    }
    slot->rank = rank;
    ch->slots[ch->nsends] = slot;
    mpi_check(MPI_Isend(slot->words, HEADER_BYTES, MPI_BYTE, rank, TAG_REPLY, ch->comm, &ch->reqs[ch->nsends]),
              "MPI_Isend of a reply failed");
    ch->nsends++;
    poke_client(ch, rank);
}

static void channel_reap(Channel *ch)
{
    if (!ch->nsends)
        return;
    int done = 0;
    int *idx = xmalloc((size_t)ch->nsends * sizeof(int));
    mpi_check(MPI_Testsome(ch->nsends, ch->reqs, &done, idx, MPI_STATUSES_IGNORE), "MPI_Testsome failed");
    free(idx);
    if (done == MPI_UNDEFINED || done == 0)
        return;
    int k = 0;
    for (int i = 0; i < ch->nsends; i++) {
        if (ch->reqs[i] == MPI_REQUEST_NULL) {
            /* Sent for sure now: a client that slept through the first poke (an MPI that sent the reply
             * only at its next progress) is woken now. */
            poke_client(ch, ch->slots[i]->rank);
            if (g_nfree_slots < 256)
                g_free_slots[g_nfree_slots++] = ch->slots[i];
            else
                free(ch->slots[i]);
        } else {
            ch->reqs[k] = ch->reqs[i];
            ch->slots[k] = ch->slots[i];
            k++;
        }
    }
    ch->nsends = k;
}

static void outbox_add(Core *c, int rank, int code, int64_t seq)
{
    Reply one = {rank, code, seq};
    record(c, monotonic(), -1, 0, 0, NULL, 0, &one, 1);
    if (c->channel && !c->channel->finished) {
        channel_send(c->channel, rank, code, seq);
        return;
    }
    GROW(c->outbox, c->noutbox, c->capout);
    c->outbox[c->noutbox].rank = rank;
    c->outbox[c->noutbox].code = code;
    c->outbox[c->noutbox].seq = seq;
    c->noutbox++;
}

static void channel_finish(Channel *ch)
{
    if (ch->nsends)
        mpi_check(MPI_Waitall(ch->nsends, ch->reqs, MPI_STATUSES_IGNORE), "MPI_Waitall of the last replies failed");
    for (int i = 0; i < ch->nsends; i++)
        free(ch->slots[i]);
    ch->nsends = 0;
    MPI_Cancel(&ch->recv);
    MPI_Wait(&ch->recv, MPI_STATUS_IGNORE);
    MPI_Request_free(&ch->recv);
    ch->finished = 1;
    Item *it = calloc(1, sizeof(Item));
    if (!it)
        die("out of memory");
    it->kind = I_FINISHED;
    it->channel = ch->id;
    push_item(it);
}

static int parse_keys(const uint8_t *area, int n, int64_t arg, KeyRef **keys, int *nkeys)
{
    if (!(arg & F_MULTI)) {
        *keys = xmalloc(sizeof(KeyRef));
        (*keys)[0].data = area;
        (*keys)[0].len = (size_t)n;
        *nkeys = 1;
        return 0;
    }
    int count = 0, at = 0;
    KeyRef *out = xmalloc((size_t)(n / 2 + 1) * sizeof(KeyRef));
    while (at < n) {
        if (at + 2 > n) {
            free(out);
            return -1;
        }
        int len = area[at] | (area[at + 1] << 8);
        at += 2;
        if (at + len > n) {
            free(out);
            return -1;
        }
        out[count].data = area + at;
        out[count].len = (size_t)len;
        count++;
        at += len;
    }
    *keys = out;
    *nkeys = count;
    return 0;
}

static int is_keyed(int op)
{
    return op == OP_READ || op == OP_WRITE || op == OP_RELEASE || op == OP_CANCEL || op == OP_BOUNDED ||
           op == OP_DOWNGRADE || op == OP_LOCKS;
}

static int is_native_op(int op)
{
    return op == OP_READ || op == OP_WRITE || op == OP_RELEASE || op == OP_CANCEL || op == OP_BOUNDED ||
           op == OP_DOWNGRADE || op == OP_HELLO || op == OP_CLOSE;
}

static void ask_drain(Channel *ch)
{
    if (ch->drain_asked || ch->core->ev.count < g_soft_events)
        return;
    ch->drain_asked = 1;
    Item *it = calloc(1, sizeof(Item));
    if (!it)
        die("out of memory");
    it->kind = I_DRAIN;
    it->channel = ch->id;
    push_item(it);
}

/* Hand a special reply (its text is Python's) to the Python thread. */
static void push_special(Channel *ch, int rank, int op, int64_t seq, const KeyRef *keys, int nkeys, Special *sp)
{
    Item *it = calloc(1, sizeof(Item));
    if (!it)
        die("out of memory");
    it->kind = I_SPECIAL;
    it->channel = ch->id;
    it->rank = rank;
    it->op = op;
    it->seq = seq;
    size_t total = 0;
    for (int k = 0; k < nkeys; k++)
        total += keys[k].len;
    it->data = xmalloc(total);
    it->keys = xmalloc((size_t)(nkeys + 1) * sizeof(KeyRef));
    size_t at = 0;
    for (int k = 0; k < nkeys; k++) {
        if (keys[k].len)
            memcpy(it->data + at, keys[k].data, keys[k].len);
        it->keys[k].data = it->data + at;
        it->keys[k].len = keys[k].len;
        at += keys[k].len;
    }
    it->nkeys = nkeys;
    it->sp = *sp;
    memset(sp, 0, sizeof *sp);
    push_item(it);
}

/* Handle at most one arrived request of ch (g_lock held); return whether one arrived.  A client's message is
 * never a reason to die: one too long for the receive (MPI_ERR_TRUNCATE; the communicator returns errors) or
 * with a header that does not fit it goes to Python, which refuses it (server/intake.py). */
static int channel_poll(Channel *ch)
{
    int flag = 0, truncated = 0;
    if (ch->finished)
        return 0;
    ch->status.MPI_ERROR = MPI_SUCCESS;
    int err = MPI_Test(&ch->recv, &flag, &ch->status);
    if (err == MPI_SUCCESS && flag)
        err = ch->status.MPI_ERROR;
    if (err != MPI_SUCCESS) {
        int cls = MPI_ERR_OTHER;
        MPI_Error_class(err, &cls);
        if (cls != MPI_ERR_TRUNCATE)
            die("MPI_Test of the request receive failed");
        flag = truncated = 1;
    }
    if (!flag) {
        if (ch->nsends)
            channel_reap(ch);
        return 0;
    }
    int src = ch->status.MPI_SOURCE, count = 0;
    MPI_Get_count(&ch->status, MPI_BYTE, &count);
    if (truncated || count < 0 || count > MAX_MESSAGE)
        count = MAX_MESSAGE;
    int64_t h[HEADER_WORDS];
    memcpy(h, ch->buf, sizeof h);
    int op = (int)h[0];
    int fast = !truncated && count >= HEADER_BYTES && h[0] == op && h[6] == count - HEADER_BYTES && h[4] == 0 &&
               !ch->deferred[src] && is_native_op(op) && !(is_keyed(op) && (h[2] & F_KEYS_IN_PAYLOAD));
    KeyRef *keys = NULL;
    int nkeys = 1;
    if (fast && is_keyed(op) && parse_keys(ch->buf + HEADER_BYTES, count - HEADER_BYTES, h[2], &keys, &nkeys))
        fast = 0;
    if (!fast) {
        Item *it = calloc(1, sizeof(Item));
        if (!it)
            die("out of memory");
        it->kind = I_MESSAGE;
        it->channel = ch->id;
        it->rank = src;
        it->count = count;
        it->truncated = truncated;
        it->data = xmalloc(MAX_MESSAGE);
        memcpy(it->data, ch->buf, MAX_MESSAGE);
        ch->deferred[src]++;
        push_item(it);
        mpi_check(MPI_Start(&ch->recv), "MPI_Start of the request receive failed");
        return 1;
    }
    Out out = {0};
    Special sp = {0};
    const KeyRef *use = keys ? keys : &DEFAULT_KEY;
    Core *c = ch->core;
    core_handle(c, src, op, h[1], h[2], h[3], use, nkeys, h[5], monotonic(), &out, &sp);
    for (int i = 0; i < out.n; i++)
        if (out.r[i].code != R_DEADLOCK && out.r[i].code != R_REFUSED)
            channel_send(ch, out.r[i].rank, out.r[i].code, out.r[i].seq);
    free(out.r);
    if (sp.kind)
        push_special(ch, src, op, h[1], use, nkeys, &sp);
    free(keys);
    ask_drain(ch);
    if (c->closed) {
        channel_finish(ch);
        return 1;
    }
    if (ch->nsends >= 16)
        channel_reap(ch);
    mpi_check(MPI_Start(&ch->recv), "MPI_Start of the request receive failed");
    return 1;
}

static int over_hard_bound(void)
{
    for (Channel *ch = g_channels; ch; ch = ch->next)
        if (!ch->finished && ch->core->ev.count >= g_hard_events)
            return 1;
    return 0;
}

static void nap(double seconds)
{
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}
