/* Admin routes: take a port down (refuse/hang/error) or up again, and set failure rules. */
#include "sim/sim.h"

#include <ctype.h>
#include <string.h>

/* True when the body is empty or only whitespace. */
static bool body_blank(const struct sim_req *req)
{
    for (size_t i = 0; i < req->body.len; i++) {
        if (!isspace((unsigned char)req->body.data[i])) {
            return false;
        }
    }
    return true;
}

/* Parses the body as a JSON object. Returns a new reference, or NULL with r filled (400). */
static json_t *parse_object(const struct sim_req *req, struct sim_reply *r)
{
    json_error_t jerr;
    json_t *body = json_loadb(req->body.data ? req->body.data : "", req->body.len, 0, &jerr);
    if (body == NULL) {
        sim_reply_error(r, 400, "malformed JSON: %s", jerr.text);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        sim_reply_error(r, 400, "body must be a JSON object");
        return NULL;
    }
    return body;
}

/* Reads {"mode": ...} of POST .../down; "refuse" without a body. Returns 0, or -1 with r. */
static int down_mode(const struct sim_req *req, enum sim_mode *mode, struct sim_reply *r)
{
    *mode = SIM_MODE_REFUSE;
    if (body_blank(req)) {
        return 0;
    }
    json_t *body = parse_object(req, r);
    if (body == NULL) {
        return -1;
    }
    const json_t *m = json_object_get(body, "mode");
    int rc = 0;
    if (m != NULL && (!json_is_string(m) || sim_mode_parse(json_string_value(m), mode) != 0)) {
        sim_reply_error(r, 400, "mode must be \"refuse\", \"hang\" or \"error\"");
        rc = -1;
    }
    json_decref(body);
    return rc;
}

static void set_mode(struct sim_port *p, struct sim_req *req, enum sim_mode mode,
                     struct sim_reply *r)
{
    struct sim_port *target = req->target;
    if (target == p && mode == SIM_MODE_REFUSE) {
        /* The daemon can't stop itself from one of its own threads: refuse new connections
         * now, and let the main thread stop the daemon once this answer is sent. */
        sim_http_quiesce(p);
        req->stop_after = true;
        log_info("%s (port %d) is going down (refuse)", p->id, p->port);
        r->status = 204;
        return;
    }
    int rc = sim_control_set_mode(p->sim, p, target, mode);
    if (rc == 0) {
        r->status = 204;
    } else if (atomic_load(&p->mode) == SIM_MODE_REFUSE) {
        r->status = 0; /* this port went down meanwhile */
    } else if (mode != SIM_MODE_REFUSE && !atomic_load(&target->listening)) {
        sim_reply_error(r, 500, "%s could not listen on port %d again", target->id, target->port);
    } else {
        sim_reply_error(r, 503, "the simulator is stopping");
    }
}

static void serve_rules(struct sim_port *p, struct sim_req *req, struct sim_reply *r)
{
    if (strcmp(req->method, "DELETE") == 0) {
        sim_rules_clear(&p->rules);
        log_info("%s: failure rules cleared", p->id);
        r->status = 204;
        return;
    }
    json_t *body = parse_object(req, r);
    if (body == NULL) {
        return;
    }
    char err[256];
    if (sim_rules_replace(&p->rules, p->role, body, err, sizeof err) != 0) {
        sim_reply_error(r, 400, "%s", err);
    } else {
        log_info("%s: %zu failure rule(s) set", p->id, atomic_load(&p->rules.active));
        r->status = 204;
    }
    json_decref(body);
}

/* POST /admin/capacity {"capacity": K} on the NLP port: the capacity from now on. */
static void serve_capacity(struct sim_port *p, struct sim_req *req, struct sim_reply *r)
{
    json_t *body = parse_object(req, r);
    if (body == NULL) {
        return;
    }
    const json_t *k = json_object_get(body, "capacity");
    if (!json_is_integer(k) || json_integer_value(k) < 1 || json_integer_value(k) > 100000) {
        sim_reply_error(r, 400, "capacity must be an integer from 1 to 100000");
    } else {
        sim_meter_set_capacity(&p->sim->meter, (int)json_integer_value(k));
        r->status = 204;
    }
    json_decref(body);
}

void sim_admin_serve(struct sim_port *p, struct sim_req *req, struct sim_reply *r)
{
    enum sim_mode mode = SIM_MODE_UP;
    switch (req->route) {
    case SIM_R_ADMIN_DOWN:
        if (down_mode(req, &mode, r) == 0) {
            set_mode(p, req, mode, r);
        }
        return;
    case SIM_R_ADMIN_UP:
        set_mode(p, req, SIM_MODE_UP, r);
        return;
    case SIM_R_ADMIN_RULES:
        serve_rules(p, req, r);
        return;
    case SIM_R_ADMIN_CAPACITY:
        serve_capacity(p, req, r);
        return;
    default:
        sim_reply_error(r, 404, "not found");
        return;
    }
}
