/* Ports: endpoint and mode names, and the set-up and tear-down of each port's state. */
#include "sim/sim.h"

#include "common/clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const ep_names[SIM_EP_COUNT] = {"upload", "denoise", "ivr", "lid",
                                                   "stt",    "llm1",    "llm2"};

static const char *const mode_names[] = {"up", "refuse", "hang", "error"};

const char *sim_ep_name(enum sim_ep ep)
{
    return ep < SIM_EP_COUNT ? ep_names[ep] : "?";
}

const char *sim_ep_stage(enum sim_ep ep)
{
    return ep == SIM_EP_UPLOAD ? "distribute" : sim_ep_name(ep);
}

int sim_ep_parse(const char *name, enum sim_ep *out)
{
    if (strcmp(name, "distribute") == 0) {
        *out = SIM_EP_UPLOAD;
        return 0;
    }
    for (int i = 0; i < SIM_EP_COUNT; i++) {
        if (strcmp(name, ep_names[i]) == 0) {
            *out = (enum sim_ep)i;
            return 0;
        }
    }
    return -1;
}

bool sim_ep_in_role(enum sim_ep ep, enum sim_role role)
{
    if (role == SIM_ROLE_NODE) {
        return ep <= SIM_EP_STT;
    }
    return ep == SIM_EP_LLM1 || ep == SIM_EP_LLM2;
}

int sim_mode_parse(const char *s, enum sim_mode *out)
{
    for (int i = SIM_MODE_REFUSE; i <= SIM_MODE_ERROR; i++) {
        if (strcmp(s, mode_names[i]) == 0) {
            *out = (enum sim_mode)i;
            return 0;
        }
    }
    return -1;
}

const char *sim_mode_name(enum sim_mode mode)
{
    return (int)mode >= 0 && mode <= SIM_MODE_ERROR ? mode_names[mode] : "?";
}

/* Initialises one port's locks and tables. Returns 0 or -1 (nothing to free then). */
static int port_init(struct sim_port *p)
{
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        return -1;
    }
    if (clock_cond_init(&p->slot_cv) != 0) {
        goto fail_mu;
    }
    if (clock_cond_init(&p->state_cv) != 0) {
        goto fail_slot;
    }
    if (pthread_mutex_init(&p->files_mu, NULL) != 0) {
        goto fail_state;
    }
    if (pthread_mutex_init(&p->rules.mu, NULL) != 0) {
        goto fail_files;
    }
    int shards = 0;
    for (; shards < SIM_KEY_SHARDS; shards++) {
        if (pthread_mutex_init(&p->keys.shard[shards].mu, NULL) != 0) {
            goto fail_keys;
        }
        sim_map_init(&p->keys.shard[shards].map);
    }
    sim_map_init(&p->files);
    p->rules.rule = NULL;
    p->rules.n = 0;
    atomic_init(&p->rules.active, 0);
    atomic_init(&p->listening, false);
    atomic_init(&p->quiesced_fd, -1);
    atomic_init(&p->mode, SIM_MODE_UP);
    p->slots_used = 0;
    p->daemon = NULL;
    /* Counters: the struct was calloc'ed, and all-zero bytes are a valid zero atomic here. */
    return 0;

fail_keys:
    while (shards-- > 0) {
        pthread_mutex_destroy(&p->keys.shard[shards].mu);
    }
    pthread_mutex_destroy(&p->rules.mu);
fail_files:
    pthread_mutex_destroy(&p->files_mu);
fail_state:
    pthread_cond_destroy(&p->state_cv);
fail_slot:
    pthread_cond_destroy(&p->slot_cv);
fail_mu:
    pthread_mutex_destroy(&p->mu);
    return -1;
}

static void port_free(struct sim_port *p)
{
    sim_rules_clear(&p->rules);
    for (int i = 0; i < SIM_KEY_SHARDS; i++) {
        sim_map_clear(&p->keys.shard[i].map);
        pthread_mutex_destroy(&p->keys.shard[i].mu);
    }
    sim_map_clear(&p->files);
    pthread_mutex_destroy(&p->rules.mu);
    pthread_mutex_destroy(&p->files_mu);
    pthread_cond_destroy(&p->state_cv);
    pthread_cond_destroy(&p->slot_cv);
    pthread_mutex_destroy(&p->mu);
}

int sim_ports_init(struct sim *s)
{
    const struct sim_config *cfg = &s->cfg;
    int n = cfg->nodes + 1;
    s->ports = calloc((size_t)n, sizeof *s->ports);
    if (s->ports == NULL) {
        return -1;
    }
    s->nports = 0;
    for (int i = 0; i < n; i++) {
        struct sim_port *p = &s->ports[i];
        p->sim = s;
        if (i < cfg->nodes) {
            p->role = SIM_ROLE_NODE;
            p->index = i;
            p->port = cfg->base_port + i;
            p->capacity = cfg->node_capacity;
            snprintf(p->id, sizeof p->id, "node-%d", i);
        } else {
            p->role = SIM_ROLE_NLP;
            p->index = -1;
            p->port = cfg->nlp_port;
            p->capacity = cfg->nlp_capacity;
            snprintf(p->id, sizeof p->id, "nlp");
        }
        if (port_init(p) != 0) {
            return -1;
        }
        s->nports = i + 1;
    }
    return 0;
}

void sim_ports_free(struct sim *s)
{
    for (int i = 0; i < s->nports; i++) {
        port_free(&s->ports[i]);
    }
    free(s->ports);
    s->ports = NULL;
    s->nports = 0;
}

void sim_port_set_mode(struct sim_port *p, enum sim_mode mode)
{
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->mode, (int)mode);
    pthread_cond_broadcast(&p->slot_cv);
    pthread_cond_broadcast(&p->state_cv);
    pthread_mutex_unlock(&p->mu);
}
