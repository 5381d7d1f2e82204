/* gh__workers_gather (proxy/proxy.h): a function run on every worker's own
 * thread, its answers collected by the caller, which waits a bounded time.
 * The admin pages sum what each worker holds this way. */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy/proxy.h"
#include "proxy/xpipe.h"

typedef struct gather {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned pending;       /* workers yet to answer */
    unsigned refs;          /* the caller and each job posted */
    bool abandoned;         /* the caller stopped waiting: answers are dropped */
    void (*fn)(gh_server_t *w, const void *arg, void *slot);
    size_t size;
    char *out;              /* a slot per worker */
    char arg[];
} gather_t;

typedef struct gather_job {
    gather_t *g;
    gh_server_t *w;
} gather_job_t;

static void gather_unref(gather_t *g)
{
    pthread_mutex_lock(&g->mu);
    bool last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->cv);
        free(g->out);
        free(g);
    }
}

static void gather_run(void *arg)
{
    gather_job_t *j = arg;
    gather_t *g = j->g;
    char *slot = calloc(1, g->size ? g->size : 1);
    if (slot)
        g->fn(j->w, g->arg, slot);
    pthread_mutex_lock(&g->mu);
    if (slot && !g->abandoned)
        memcpy(g->out + j->w->worker * g->size, slot, g->size);
    g->pending--;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
    free(slot);
    free(j);
    gather_unref(g);
}

void gh__workers_gather(gh_server_t *self, void (*fn)(gh_server_t *w, const void *arg, void *slot),
                        const void *arg, size_t argsize, void *out, size_t size)
{
    unsigned nworkers = gh__nworkers();
    memset(out, 0, size * nworkers);
    fn(self, arg, (char *)out + self->worker * size);
    if (nworkers < 2)
        return;
    gather_t *g = calloc(1, sizeof *g + argsize);
    if (!g || !(g->out = calloc(nworkers, size ? size : 1))) {
        free(g);
        return;
    }
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->fn = fn;
    g->size = size;
    g->refs = 1;
    memcpy(g->arg, arg, argsize);
    for (unsigned k = 0; k < nworkers; k++) {
        if (k == self->worker)
            continue;
        gather_job_t *j = malloc(sizeof *j);
        if (!j)
            continue;
        j->g = g;
        j->w = gh__worker(k);
        pthread_mutex_lock(&g->mu);
        g->pending++;
        g->refs++;
        pthread_mutex_unlock(&g->mu);
        if (gh_xloop_post(gh__worker(k)->inbox, gather_run, j) != 0) {
            pthread_mutex_lock(&g->mu);
            g->pending--;
            g->refs--;
            pthread_mutex_unlock(&g->mu);
            free(j);
        }
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    pthread_mutex_lock(&g->mu);
    while (g->pending > 0)
        if (pthread_cond_timedwait(&g->cv, &g->mu, &until) != 0)
            break;
    g->abandoned = true;
    for (unsigned k = 0; k < nworkers; k++)
        if (k != self->worker)
            memcpy((char *)out + k * size, g->out + k * size, size);
    pthread_mutex_unlock(&g->mu);
    gather_unref(g);
}
