/* cofi-sim's entry point: the command line, starting every port, and a clean stop on a signal. */
#include "sim/sim.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "common/cli.h"

#define EXIT_USAGE CLI_EXIT_USAGE

static const char usage[] =
    "usage: cofi-sim --nodes N --base-port P --nlp-port Q [options]\n"
    "\n"
    "Plays N GPU mediator nodes (node i on port P+i) and the NLP API (port Q) on one host.\n"
    "\n"
    "  --nodes N              number of mediator nodes (1..1024), required\n"
    "  --base-port P          port of node-0; node i listens on P+i, required\n"
    "  --node-capacity C      requests a node works on at once; the rest queue (default 8)\n"
    "  --nlp-port Q           port of the NLP API, required\n"
    "  --nlp-capacity K       requests the NLP API works on at once; beyond: 429 (default 100)\n"
    "  --nlp-capacity-schedule T1=K1[,T2=K2...]\n"
    "                         the NLP capacity becomes Ki at Ti seconds from start\n"
    "  --nlp-tokens-per-minute N  token budget of the NLP API (prompt = text length / 4,\n"
    "                         completion 20); beyond: 429 with Retry-After (default: none)\n"
    "  --nlp-protocol P       cofi (/llm1, /llm2) or openai (/v1/chat/completions)\n"
    "  --latency-ms LIST      STAGE=MS[,STAGE=MS...], STAGE one of upload (alias distribute),\n"
    "                         denoise, ivr, lid, stt, llm1, llm2, default (default 0 ms)\n"
    "  --jitter-pct J         spread every latency uniformly by +-J percent (default 0)\n"
    "  --fail-rate F          answer a share F (0..1) of worker requests 503 (default 0)\n"
    "  --seed S               seed of results, failures and jitter (default 1)\n"
    "  --host H               address to listen on (default 127.0.0.1)\n"
    "  --log-level L          debug, info, warn or error (default info)\n"
    "  --help                 print this help and exit\n";

static int parse_seed(const char *flag, const char *v, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || v[0] == '-') {
        return cli_bad(flag, "expected a non-negative integer, got '%s'", v);
    }
    *out = (uint64_t)n;
    return 0;
}

/* Parses STAGE=MS[,STAGE=MS...] into cfg->latency_us; "default" fills the stages not named. */
static int parse_latency(const char *flag, const char *v, struct sim_config *cfg)
{
    double ms[SIM_EP_COUNT];
    bool named[SIM_EP_COUNT] = {false};
    double fallback = 0;
    char copy[1024];
    if (strlen(v) >= sizeof copy) {
        return cli_bad(flag, "list too long");
    }
    snprintf(copy, sizeof copy, "%s", v);
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (eq == NULL) {
            return cli_bad(flag, "expected STAGE=MS, got '%s'", item);
        }
        *eq = '\0';
        double value = 0;
        char what[160];
        snprintf(what, sizeof what, "%s %s", flag, item);
        if (cli_double(what, eq + 1, 0, 3600000, &value) != 0) {
            return EXIT_USAGE;
        }
        enum sim_ep ep;
        if (strcmp(item, "default") == 0) {
            fallback = value;
        } else if (sim_ep_parse(item, &ep) == 0) {
            ms[ep] = value;
            named[ep] = true;
        } else {
            return cli_bad(flag,
                           "unknown stage '%s' (upload, distribute, denoise, ivr, lid, stt, "
                           "llm1, llm2, default)",
                           item);
        }
    }
    for (int i = 0; i < SIM_EP_COUNT; i++) {
        cfg->latency_us[i] = (int64_t)llround((named[i] ? ms[i] : fallback) * 1000.0);
    }
    return 0;
}

/* Parses the command line into cfg. Returns 0 to run, -1 after --help, or EXIT_USAGE. */
static int parse_args(int argc, char **argv, struct sim_config *cfg, enum log_level *level)
{
    cli_program("cofi-sim");
    memset(cfg, 0, sizeof *cfg);
    cfg->node_capacity = 8;
    cfg->nlp_capacity = 100;
    cfg->seed = 1;
    cfg->nodes = -1;
    cfg->base_port = -1;
    cfg->nlp_port = -1;
    snprintf(cfg->host, sizeof cfg->host, "127.0.0.1");
    *level = LOG_INFO;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(usage, stdout);
            return -1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            return cli_bad(arg, "unexpected argument");
        }
        char flag[64];
        const char *value = NULL;
        int rc = cli_flag_value(argc, argv, &i, flag, sizeof flag, &value);
        if (rc != 0) {
            return rc;
        }
        if (strcmp(flag, "--nodes") == 0) {
            rc = cli_int(flag, value, 1, SIM_MAX_NODES, &cfg->nodes);
        } else if (strcmp(flag, "--base-port") == 0) {
            rc = cli_int(flag, value, 1, 65535, &cfg->base_port);
        } else if (strcmp(flag, "--node-capacity") == 0) {
            rc = cli_int(flag, value, 1, 100000, &cfg->node_capacity);
        } else if (strcmp(flag, "--nlp-port") == 0) {
            rc = cli_int(flag, value, 1, 65535, &cfg->nlp_port);
        } else if (strcmp(flag, "--nlp-capacity") == 0) {
            rc = cli_int(flag, value, 1, 100000, &cfg->nlp_capacity);
        } else if (strcmp(flag, "--nlp-capacity-schedule") == 0) {
            char err[160];
            cfg->nschedule =
                sim_schedule_parse(value, cfg->schedule, SIM_SCHEDULE_MAX, err, sizeof err);
            if (cfg->nschedule < 0) {
                return cli_bad(flag, "%s", err);
            }
        } else if (strcmp(flag, "--nlp-tokens-per-minute") == 0) {
            int n = 0;
            rc = cli_int(flag, value, 1, 2000000000, &n);
            cfg->nlp_tokens_per_minute = n;
        } else if (strcmp(flag, "--nlp-protocol") == 0) {
            if (strcmp(value, "cofi") == 0) {
                cfg->nlp_protocol = SIM_PROTO_COFI;
            } else if (strcmp(value, "openai") == 0) {
                cfg->nlp_protocol = SIM_PROTO_OPENAI;
            } else {
                return cli_bad(flag, "expected cofi or openai, got '%s'", value);
            }
        } else if (strcmp(flag, "--latency-ms") == 0) {
            rc = parse_latency(flag, value, cfg);
        } else if (strcmp(flag, "--jitter-pct") == 0) {
            rc = cli_double(flag, value, 0, 100, &cfg->jitter_pct);
        } else if (strcmp(flag, "--fail-rate") == 0) {
            rc = cli_double(flag, value, 0, 1, &cfg->fail_rate);
        } else if (strcmp(flag, "--seed") == 0) {
            rc = parse_seed(flag, value, &cfg->seed);
        } else if (strcmp(flag, "--host") == 0) {
            if (strlen(value) == 0 || strlen(value) >= sizeof cfg->host) {
                return cli_bad(flag, "expected an IP address, got '%s'", value);
            }
            snprintf(cfg->host, sizeof cfg->host, "%s", value);
        } else if (strcmp(flag, "--log-level") == 0) {
            if (log_parse_level(value, level) != 0) {
                return cli_bad(flag, "expected debug, info, warn or error, got '%s'", value);
            }
        } else {
            return cli_bad(flag, "unknown option");
        }
        if (rc != 0) {
            return EXIT_USAGE;
        }
    }

    if (cfg->nodes < 0) {
        return cli_bad("--nodes", "is required");
    }
    if (cfg->base_port < 0) {
        return cli_bad("--base-port", "is required");
    }
    if (cfg->nlp_port < 0) {
        return cli_bad("--nlp-port", "is required");
    }
    int last = cfg->base_port + cfg->nodes - 1;
    if (last > 65535) {
        return cli_bad("--base-port", "nodes would need ports %d..%d, beyond 65535", cfg->base_port,
                       last);
    }
    if (cfg->nlp_port >= cfg->base_port && cfg->nlp_port <= last) {
        return cli_bad("--nlp-port", "%d is one of the node ports %d..%d", cfg->nlp_port,
                       cfg->base_port, last);
    }
    return 0;
}

/* Lets the process hold as many connections as the daemons accept. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return;
    }
    rlim_t want = rl.rlim_max;
    if (want == RLIM_INFINITY || want > 1048576) {
        want = 1048576;
    }
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Stops every daemon, waking everything that waits first. */
static void stop_all(struct sim *s)
{
    for (int i = 0; i < s->nports; i++) {
        sim_port_set_mode(&s->ports[i], SIM_MODE_REFUSE);
    }
    for (int i = 0; i < s->nports; i++) {
        sim_http_stop(&s->ports[i]);
    }
}

int main(int argc, char **argv)
{
    static struct sim sim;
    struct sim *s = &sim;
    enum log_level level = LOG_INFO;
    log_set_ident("cofi-sim");
    /* Simulated latencies are timed waits: 1 ns of timer slack instead of the default 50 us,
     * inherited by every thread the daemons start. */
    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    int rc = parse_args(argc, argv, &s->cfg, &level);
    if (rc == -1) {
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    log_set_level(level);
    raise_fd_limit();

    if (sim_control_init(s) != 0) {
        log_error("cannot create the control channel");
        return 1;
    }
    int status = 1;
    if (sim_meter_init(&s->meter, &s->cfg) != 0 || sim_ports_init(s) != 0) {
        log_error("out of memory");
        goto out;
    }
    if (sim_control_install_signals(s) != 0) {
        log_error("cannot install signal handlers");
        goto out;
    }
    for (int i = 0; i < s->nports; i++) {
        if (sim_http_start(&s->ports[i]) != 0) {
            goto out_stop;
        }
    }
    if (sim_sampler_start(s) != 0) {
        log_error("cannot start the NLP sampler");
        goto out_stop;
    }
    const struct sim_config *cfg = &s->cfg;
    log_info("cofi-sim ready: nodes %s:%d..%d, nlp %s:%d", cfg->host, cfg->base_port,
             cfg->base_port + cfg->nodes - 1, cfg->host, cfg->nlp_port);
    sim_control_run(s);
    log_info("stopping");
    status = 0;

out_stop:
    sim_sampler_stop(s);
    stop_all(s);
out:
    sim_ports_free(s);
    sim_meter_free(&s->meter);
    sim_control_free(s);
    return status;
}
