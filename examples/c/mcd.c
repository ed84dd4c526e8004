/*
 * mcd: a small cluster member written in C on libmicrocluster.
 *
 *   mcd <state_dir> bootstrap <name> <address>       start, bootstrap a new cluster, serve
 *   mcd <state_dir> join <name> <address> <token>    start, join a cluster, serve
 *   mcd <state_dir> run                              start an initialised member again, serve
 *   mcd <state_dir> token <name>                     print a join token (asks the running member)
 *   mcd <state_dir> members                          print the members as JSON
 *   mcd <state_dir> sql <query>                      run SQL, print the result as JSON
 *   mcd <state_dir> query <method> <path>            call the REST API (control socket)
 *   mcd <state_dir> stop                             stop the running member
 *
 * A serving mcd prints every hook it runs, greets the cluster once it is a member (a
 * read-modify-write transaction written in C: it stores its name with a sequence number in the
 * `greetings` table), prints "mcd: ready", and runs until SIGINT or SIGTERM (or `mcd stop`).
 * MCD_FAIL_HOOK=<HookName> (for example PreJoin) makes that hook fail, to show that its message
 * reaches the caller.
 *
 * It also serves an extension endpoint, GET /1.0/greetings/{member} (server "mcd.example.com",
 * on the core listener and the control socket), answered in C: it reads the member's greeting
 * in a transaction and answers {"member", "seq", "served_by"}, 404 when that member has not
 * greeted, 400 for a malformed name. It forwards `?target=<member>` to that member (over mTLS):
 *   mcd <state_dir> query GET '/1.0/greetings/c2?target=c3'
 */

#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "microcluster.h"

static const char *START_ARGS =
    "{\"version\": \"1.0\", \"schema_updates\": ["
    "\"CREATE TABLE greetings (member TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL)\"],"
    " \"extension_servers\": [{\"name\": \"mcd.example.com\", \"core_api\": true,"
    " \"serve_unix\": true, \"resources\": [{\"path_prefix\": \"1.0\", \"endpoints\": ["
    " {\"name\": \"greeting\", \"path\": \"greetings/{member}\","
    " \"methods\": {\"GET\": {\"proxy_target\": true}}}]}]}]}";

/* Prints a failed call's error and frees it; returns 1 for use as an exit code. */
static int report(const char *what, mc_result rc, mc_error *err) {
    fprintf(stderr, "mcd: %s failed (%u): %s\n", what, (unsigned)rc,
            err ? mc_error_message(err) : "no details");
    mc_error_free(err);
    return 1;
}

/* Prints a string returned by the library and frees it. */
static void print_and_free(char *text) {
    printf("%s\n", text);
    mc_string_free(text);
}

/* Every hook: print it, and fail when MCD_FAIL_HOOK names it. `userdata` is the hook's name. */
static int hook(void *userdata, const mc_state *state, const char *args_json, mc_error **err) {
    const char *name = userdata;
    printf("mcd: hook %s member=%s args=%s\n", name, mc_state_name(state), args_json);
    fflush(stdout);
    const char *fail = getenv("MCD_FAIL_HOOK");
    if (fail != NULL && strcmp(fail, name) == 0) {
        char message[128];
        snprintf(message, sizeof message, "%s refused by mcd (MCD_FAIL_HOOK)", name);
        mc_error_set(err, MC_ERR_INVALID_ARGUMENT, message);
        return 1;
    }
    return 0;
}

/* One trampoline per hook, so that each knows its name. */
#define HOOK(fn, label)                                                                   \
    static int fn(void *u, const mc_state *s, const char *a, mc_error **e) {              \
        (void)u;                                                                          \
        return hook(label, s, a, e);                                                      \
    }
HOOK(pre_init, "PreInit")
HOOK(post_bootstrap, "PostBootstrap")
HOOK(pre_join, "PreJoin")
HOOK(post_join, "PostJoin")
HOOK(on_new_member, "OnNewMember")
HOOK(on_start, "OnStart")
HOOK(pre_remove, "PreRemove")
HOOK(post_remove, "PostRemove")
HOOK(on_daemon_config_update, "OnDaemonConfigUpdate")

/*
 * The greeting transaction: reads how many members greeted so far and stores this member's
 * name with the next number. It may run more than once (after a conflict), so it only touches
 * the database.
 */
static int greet(void *userdata, mc_tx *tx, mc_error **err) {
    const char *member = userdata;
    char *rows = NULL;
    if (mc_tx_query(tx, "SELECT count(*) FROM greetings", NULL, &rows, err) != MC_OK) {
        return 1;
    }
    /* rows is {"columns":["count(*)"],"rows":[[N]]}. */
    long long count = 0;
    const char *cell = strstr(rows, "[[");
    if (cell == NULL || sscanf(cell, "[[%lld", &count) != 1) {
        mc_string_free(rows);
        mc_error_set(err, MC_ERR_INTERNAL, "unexpected rows from count(*)");
        return 1;
    }
    mc_string_free(rows);
    char params[256];
    snprintf(params, sizeof params, "[\"%s\", %lld]", member, count + 1);
    int64_t changed = 0;
    if (mc_tx_execute(tx, "INSERT INTO greetings (member, seq) VALUES (?1, ?2)", params,
                      &changed, err) != MC_OK) {
        return 1;
    }
    return changed == 1 ? 0 : 1;
}

/* What the greeting lookup transaction reads: the member asked for, its number if found. */
struct lookup {
    const char *member;
    long long seq;
    int found;
};

/* The lookup transaction (read-only; it may run more than once, so it starts afresh). */
static int lookup_greeting(void *userdata, mc_tx *tx, mc_error **err) {
    struct lookup *lookup = userdata;
    lookup->found = 0;
    char params[128];
    snprintf(params, sizeof params, "[\"%s\"]", lookup->member);
    char *rows = NULL;
    if (mc_tx_query(tx, "SELECT seq FROM greetings WHERE member = ?1", params, &rows, err) !=
        MC_OK) {
        return 1;
    }
    /* rows is {"columns":["seq"],"rows":[[N]]} or {"columns":["seq"],"rows":[]}. */
    const char *cell = strstr(rows, "[[");
    if (cell != NULL && sscanf(cell, "[[%lld", &lookup->seq) == 1) {
        lookup->found = 1;
    }
    mc_string_free(rows);
    return 0;
}

/*
 * The extension endpoint handler (mc_hooks.endpoint), for GET /1.0/greetings/{member}. The
 * member's name is taken from "vars" of the request JSON (a real program would use a JSON
 * parser); names other than [A-Za-z0-9_-]{1,63} are refused with 400.
 */
static int endpoint(void *userdata, const mc_state *state, const char *server,
                    const char *name, const char *request_json, char **response_json,
                    mc_error **err) {
    (void)userdata;
    printf("mcd: endpoint %s/%s member=%s request=%s\n", server, name, mc_state_name(state),
           request_json);
    fflush(stdout);
    const char *key = "\"vars\":{\"member\":\"";
    const char *start = strstr(request_json, key);
    char member[64] = "";
    size_t len = 0;
    if (start != NULL) {
        start += strlen(key);
        while (len < sizeof member - 1 && start[len] != '\0' && start[len] != '"' &&
               (isalnum((unsigned char)start[len]) || start[len] == '-' || start[len] == '_')) {
            member[len] = start[len];
            len++;
        }
    }
    if (len == 0 || start[len] != '"') {
        mc_error_set(err, MC_ERR_INVALID_ARGUMENT, "malformed member name");
        return 1;
    }
    member[len] = '\0';
    struct lookup lookup = {.member = member};
    if (mc_state_transaction(state, lookup_greeting, &lookup, err) != MC_OK) {
        return 1;
    }
    if (!lookup.found) {
        char message[128];
        snprintf(message, sizeof message, "no greeting from %s", member);
        mc_error_set(err, MC_ERR_NOT_FOUND, message);
        return 1;
    }
    char response[256];
    snprintf(response, sizeof response, "{\"member\":\"%s\",\"seq\":%lld,\"served_by\":\"%s\"}",
             member, lookup.seq, mc_state_name(state));
    *response_json = mc_string_new(response);
    return 0;
}

/* Stops the app when SIGINT or SIGTERM arrives (blocked in every thread, taken here). */
static void *signal_thread(void *arg) {
    mc_app *app = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    if (sigwait(&set, &sig) == 0) {
        mc_error *err = NULL;
        mc_result rc = mc_app_stop(app, &err);
        if (rc != MC_OK) {
            report("mc_app_stop", rc, err);
        }
    }
    return NULL;
}

/* The library's log events, on stderr like the hooks' lines. */
static void print_log(void *userdata, int level, const char *target, const char *message) {
    static const char *names[] = {"", "error", "warn", "info", "debug", "trace"};
    (void)userdata;
    fprintf(stderr, "mcd: log %s %s: %s\n", names[level], target, message);
}

/* Starts the daemon, bootstraps or joins as asked, greets, and serves until stopped. */
static int serve(mc_app *app, int argc, char **argv) {
    const char *mode = argv[2];
    const char *level = getenv("MCD_LOG_LEVEL"); /* 1 (error) to 5 (trace); default 3 */
    mc_error *log_err = NULL;
    mc_result logged = mc_log_set(print_log, NULL, level ? atoi(level) : 3, &log_err);
    if (logged != MC_OK) {
        return report("mc_log_set", logged, log_err);
    }
    mc_hooks hooks = {0};
    hooks.pre_init = pre_init;
    hooks.post_bootstrap = post_bootstrap;
    hooks.pre_join = pre_join;
    hooks.post_join = post_join;
    hooks.on_new_member = on_new_member;
    hooks.on_start = on_start;
    hooks.pre_remove = pre_remove;
    hooks.post_remove = post_remove;
    hooks.on_daemon_config_update = on_daemon_config_update;
    hooks.endpoint = endpoint;

    mc_error *err = NULL;
    mc_result rc = mc_app_start(app, START_ARGS, &hooks, &err);
    if (rc != MC_OK) {
        return report("mc_app_start", rc, err);
    }
    pthread_t signals;
    if (pthread_create(&signals, NULL, signal_thread, app) != 0) {
        fprintf(stderr, "mcd: cannot start the signal thread\n");
        return 1;
    }
    pthread_detach(signals);
    if ((rc = mc_app_ready(app, 120000, &err)) != MC_OK) {
        return report("mc_app_ready", rc, err);
    }

    if (strcmp(mode, "bootstrap") == 0 && argc == 5) {
        rc = mc_app_new_cluster(app, argv[3], argv[4], NULL, &err);
    } else if (strcmp(mode, "join") == 0 && argc == 6) {
        rc = mc_app_join_cluster(app, argv[3], argv[4], argv[5], NULL, &err);
    }
    if (rc != MC_OK) {
        int status = report(mode, rc, err);
        mc_app_stop(app, NULL);
        mc_app_wait(app, NULL);
        return status;
    }
    if (strcmp(mode, "run") != 0) {
        if ((rc = mc_app_transaction(app, greet, argv[3], &err)) != MC_OK) {
            return report("the greeting transaction", rc, err);
        }
    }
    printf("mcd: ready\n");
    fflush(stdout);

    rc = mc_app_wait(app, &err);
    printf("mcd: stopped\n");
    return rc == MC_OK ? 0 : report("the daemon", rc, err);
}

/* The client commands: they talk to the member running on the state directory. */
static int client(mc_app *app, int argc, char **argv) {
    const char *command = argv[2];
    mc_error *err = NULL;
    char *out = NULL;
    mc_result rc;
    if (strcmp(command, "token") == 0 && argc == 4) {
        rc = mc_app_new_join_token(app, argv[3], 0, &out, &err);
    } else if (strcmp(command, "members") == 0 && argc == 3) {
        rc = mc_app_cluster_members(app, &out, &err);
    } else if (strcmp(command, "sql") == 0 && argc == 4) {
        rc = mc_app_sql(app, argv[3], &out, &err);
    } else if (strcmp(command, "query") == 0 && argc == 5) {
        rc = mc_app_query(app, argv[3], argv[4], NULL, &out, &err);
    } else if (strcmp(command, "stop") == 0 && argc == 3) {
        rc = mc_app_stop(app, &err);
    } else {
        fprintf(stderr, "mcd: unknown command or wrong arguments (see the top of mcd.c)\n");
        return 2;
    }
    if (rc != MC_OK) {
        return report(command, rc, err);
    }
    if (out != NULL) {
        print_and_free(out);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: mcd <state_dir> bootstrap|join|run|token|members|sql|query|stop ...\n");
        return 2;
    }
    if (strcmp(mc_version(), MC_VERSION) != 0) {
        fprintf(stderr, "mcd: built with microcluster %s, running with %s\n", MC_VERSION,
                mc_version());
        return 1;
    }
    /* Block the stop signals before the library starts its threads, so that they inherit
     * the mask and only the signal thread takes them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    mc_app *app = NULL;
    mc_error *err = NULL;
    mc_result rc = mc_app_new(argv[1], &app, &err);
    if (rc != MC_OK) {
        return report("mc_app_new", rc, err);
    }
    const char *mode = argv[2];
    int serving = strcmp(mode, "bootstrap") == 0 || strcmp(mode, "join") == 0 ||
                  strcmp(mode, "run") == 0;
    int status;
    if (serving && ((strcmp(mode, "bootstrap") == 0 && argc == 5) ||
                    (strcmp(mode, "join") == 0 && argc == 6) ||
                    (strcmp(mode, "run") == 0 && argc == 3))) {
        status = serve(app, argc, argv);
    } else if (serving) {
        fprintf(stderr, "mcd: wrong arguments for %s (see the top of mcd.c)\n", mode);
        status = 2;
    } else {
        status = client(app, argc, argv);
    }
    mc_app_free(app);
    return status;
}
