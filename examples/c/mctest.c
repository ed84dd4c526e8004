/*
 * mctest: the C tests of libmicrocluster, in C (run by `make test`, under valgrind memcheck).
 *
 *   mctest [bad|cluster|all]      (default: all)
 *
 * bad:     every bad input without a cluster: NULL for each kind of argument, invalid UTF-8,
 *          invalid JSON and unknown keys, a freed app (set to NULL), a stopped app, a bad log
 *          level, error objects; each must give its defined code and a message, never a crash.
 * cluster: three members in this one process (three mc_apps, three temporary state dirs, free
 *          ports on 127.0.0.1): log events, bootstrap through a slow hook while the daemon stays
 *          responsive, tokens, a join refused by a PreJoin hook then retried, transactions with
 *          bound parameters written on two members and read back on the third, a counter
 *          incremented concurrently from two members, hook order per member, blocking calls
 *          from callbacks (MC_ERR_WOULD_BLOCK), an extension endpoint of member 1 called through
 *          member 2's control socket (?target=, so over mTLS) with its errors, removal of member
 *          3 with its hooks, and stop/free of all three.
 *
 * Prints one line per check and ends with "N passed, M failed"; exits 1 on any failure.
 * MCTEST_WAIT_S (default 180) bounds every wait on a condition. `make test` runs `mctest bad`
 * under valgrind memcheck and `mctest cluster` built with ASan/LSan (mctest-asan): under
 * valgrind, the cluster's Raft and TLS work is too slow for the library's 30 s deadlines (joins
 * and commits time out).
 */

#define _XOPEN_SOURCE 700

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "microcluster.h"

/* ------------------------------------------------------------------------------------------ */
/* Checks. */

static int passed;
static int failed;
static double wait_s = 180;

static void check(int ok, const char *detail, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s: ", ok ? "ok" : "FAILED");
    vprintf(fmt, ap);
    va_end(ap);
    if (!ok && detail != NULL) {
        printf("\n    %s", detail);
    }
    printf("\n");
    fflush(stdout);
    if (ok) {
        passed++;
    } else {
        failed++;
    }
}

/* Checks that a call failed with `code` and an error whose code agrees and whose message
 * contains `words`; frees the error. */
static void expect_fail(const char *what, mc_result rc, mc_error *err, mc_result code,
                        const char *words) {
    char detail[1024];
    const char *message = err ? mc_error_message(err) : NULL;
    int ok = rc == code && err != NULL && mc_error_code(err) == code && message != NULL &&
             strstr(message, words) != NULL;
    snprintf(detail, sizeof detail, "got code %u, message %s; expected code %u, message with \"%s\"",
             (unsigned)rc, message ? message : "(no error)", (unsigned)code, words);
    check(ok, detail, "%s: code %u, \"%s\"", what, (unsigned)code, words);
    mc_error_free(err);
}

/* Checks that a call succeeded (and wrote no error); frees the error otherwise. */
static int expect_ok(const char *what, mc_result rc, mc_error *err) {
    char detail[1024];
    snprintf(detail, sizeof detail, "got code %u: %s", (unsigned)rc,
             err ? mc_error_message(err) : "(no error)");
    int ok = rc == MC_OK && err == NULL;
    check(ok, detail, "%s", what);
    mc_error_free(err);
    return ok;
}

/* `fail`/`ok` for a call whose error slot is named err_. */
#define EXPECT_FAIL(what, code, words, call)                                              \
    do {                                                                                  \
        mc_error *err_ = NULL;                                                            \
        mc_result rc_ = (call);                                                           \
        expect_fail(what, rc_, err_, code, words);                                        \
    } while (0)
#define EXPECT_OK(what, call)                                                             \
    do {                                                                                  \
        mc_error *err_ = NULL;                                                            \
        mc_result rc_ = (call);                                                           \
        expect_ok(what, rc_, err_);                                                       \
    } while (0)

static int contains(const char *text, const char *words) {
    return text != NULL && strstr(text, words) != NULL;
}

static int count_of(const char *text, const char *words) {
    int n = 0;
    for (const char *p = text; p != NULL && (p = strstr(p, words)) != NULL; p += strlen(words)) {
        n++;
    }
    return n;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Temporary directories and ports. */

static void remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) {
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        DIR *dir = opendir(path);
        if (dir != NULL) {
            struct dirent *entry;
            while ((entry = readdir(dir)) != NULL) {
                if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) {
                    continue;
                }
                char child[PATH_MAX];
                snprintf(child, sizeof child, "%s/%s", path, entry->d_name);
                remove_tree(child);
            }
            closedir(dir);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static int free_address_once(char *out, size_t size);

/* Ports handed out so far: the kernel may hand a released port out again. */
static unsigned given_ports[64];
static size_t given_count;

static int port_given(unsigned port) {
    for (size_t i = 0; i < given_count; i++) {
        if (given_ports[i] == port) {
            return 1;
        }
    }
    return 0;
}

/* A free TCP port on 127.0.0.1 as "127.0.0.1:PORT" (like freeport.c), never one handed out
 * before by this process. */
static int free_address(char *out, size_t size) {
    for (int attempt = 0; attempt < 100; attempt++) {
        char candidate[64];
        if (!free_address_once(candidate, sizeof candidate)) {
            return 0;
        }
        unsigned port = (unsigned)strtoul(strrchr(candidate, ':') + 1, NULL, 10);
        if (!port_given(port) && given_count < sizeof given_ports / sizeof given_ports[0]) {
            given_ports[given_count++] = port;
            snprintf(out, size, "%s", candidate);
            return 1;
        }
    }
    return 0;
}

/* A free TCP port on 127.0.0.1 as "127.0.0.1:PORT". */
static int free_address_once(char *out, size_t size) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int ok = fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
             getsockname(fd, (struct sockaddr *)&addr, &len) == 0;
    if (fd >= 0) {
        close(fd);
    }
    if (!ok) {
        return 0;
    }
    snprintf(out, size, "127.0.0.1:%u", (unsigned)ntohs(addr.sin_port));
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Bad input, without a cluster. */

static const char *PLAIN_ARGS = "{\"version\": \"1.0\"}";

static int noop_tx(void *userdata, mc_tx *tx, mc_error **err) {
    (void)userdata;
    (void)tx;
    (void)err;
    return 0;
}

static int endpoint(void *userdata, const mc_state *state, const char *server,
                    const char *name, const char *request_json, char **response_json,
                    mc_error **err);

static void test_bad_input(const char *root) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/bad", root);
    mc_app *const SENTINEL = (mc_app *)(uintptr_t)0x1;
    char *const SENTINEL_S = (char *)(uintptr_t)0x1;

    /* NULL arguments, each named in the message; out-parameters untouched. */
    mc_app *app = SENTINEL;
    EXPECT_FAIL("mc_app_new(NULL state_dir)", MC_ERR_NULL_ARGUMENT, "Argument state_dir is NULL",
                mc_app_new(NULL, &app, &err_));
    check(app == SENTINEL, NULL, "a failed mc_app_new leaves *out untouched");
    EXPECT_FAIL("mc_app_new(NULL out)", MC_ERR_NULL_ARGUMENT, "Argument out is NULL",
                mc_app_new(dir, NULL, &err_));
    check(mc_app_new(NULL, &app, NULL) == MC_ERR_NULL_ARGUMENT, NULL,
          "without an err out-parameter the code still tells what happened");

    app = NULL;
    mc_error *err = NULL;
    mc_result rc = mc_app_new(dir, &app, &err);
    if (!expect_ok("mc_app_new on a fresh state dir", rc, err)) {
        return;
    }
    char *out = SENTINEL_S;
    EXPECT_FAIL("mc_app_start(NULL app)", MC_ERR_NULL_ARGUMENT, "Argument app is NULL",
                mc_app_start(NULL, PLAIN_ARGS, NULL, &err_));
    EXPECT_FAIL("mc_app_start(NULL args_json)", MC_ERR_NULL_ARGUMENT, "Argument args_json is NULL",
                mc_app_start(app, NULL, NULL, &err_));
    EXPECT_FAIL("mc_app_status(NULL json_out)", MC_ERR_NULL_ARGUMENT, "Argument json_out is NULL",
                mc_app_status(app, NULL, &err_));
    EXPECT_FAIL("mc_app_ready(NULL app)", MC_ERR_NULL_ARGUMENT, "Argument app is NULL",
                mc_app_ready(NULL, 0, &err_));
    EXPECT_FAIL("mc_app_remove_cluster_member(NULL name)", MC_ERR_NULL_ARGUMENT,
                "Argument name is NULL", mc_app_remove_cluster_member(app, NULL, 0, NULL, &err_));
    EXPECT_FAIL("mc_app_recover(NULL members_json)", MC_ERR_NULL_ARGUMENT,
                "Argument members_json is NULL", mc_app_recover(app, NULL, &out, &err_));
    EXPECT_FAIL("mc_app_new_cluster(NULL name)", MC_ERR_NULL_ARGUMENT, "Argument name is NULL",
                mc_app_new_cluster(app, NULL, "127.0.0.1:1", NULL, &err_));
    EXPECT_FAIL("mc_app_new_cluster(NULL address)", MC_ERR_NULL_ARGUMENT,
                "Argument address is NULL", mc_app_new_cluster(app, "c1", NULL, NULL, &err_));
    EXPECT_FAIL("mc_app_join_cluster(NULL token)", MC_ERR_NULL_ARGUMENT, "Argument token is NULL",
                mc_app_join_cluster(app, "c2", "127.0.0.1:1", NULL, NULL, &err_));
    EXPECT_FAIL("mc_app_new_join_token(NULL token_out)", MC_ERR_NULL_ARGUMENT,
                "Argument token_out is NULL", mc_app_new_join_token(app, "c2", 0, NULL, &err_));
    EXPECT_FAIL("mc_app_revoke_join_token(NULL name)", MC_ERR_NULL_ARGUMENT,
                "Argument name is NULL", mc_app_revoke_join_token(app, NULL, &err_));
    EXPECT_FAIL("mc_app_join_tokens(NULL json_out)", MC_ERR_NULL_ARGUMENT,
                "Argument json_out is NULL", mc_app_join_tokens(app, NULL, &err_));
    EXPECT_FAIL("mc_app_cluster_members(NULL app)", MC_ERR_NULL_ARGUMENT, "Argument app is NULL",
                mc_app_cluster_members(NULL, &out, &err_));
    EXPECT_FAIL("mc_app_sql(NULL query)", MC_ERR_NULL_ARGUMENT, "Argument query is NULL",
                mc_app_sql(app, NULL, &out, &err_));
    EXPECT_FAIL("mc_app_query(NULL method)", MC_ERR_NULL_ARGUMENT, "Argument method is NULL",
                mc_app_query(app, NULL, "/core/1.0", NULL, &out, &err_));
    EXPECT_FAIL("mc_app_query(NULL path)", MC_ERR_NULL_ARGUMENT, "Argument path is NULL",
                mc_app_query(app, "GET", NULL, NULL, &out, &err_));
    EXPECT_FAIL("mc_app_transaction(NULL func)", MC_ERR_NULL_ARGUMENT, "Argument func is NULL",
                mc_app_transaction(app, NULL, NULL, &err_));
    EXPECT_FAIL("mc_state_transaction(NULL state)", MC_ERR_NULL_ARGUMENT,
                "Argument state is NULL", mc_state_transaction(NULL, NULL, NULL, &err_));
    EXPECT_FAIL("mc_tx_query(NULL tx)", MC_ERR_NULL_ARGUMENT, "Argument tx is NULL",
                mc_tx_query(NULL, "SELECT 1", NULL, &out, &err_));
    EXPECT_FAIL("mc_tx_execute(NULL tx)", MC_ERR_NULL_ARGUMENT, "Argument tx is NULL",
                mc_tx_execute(NULL, "SELECT 1", NULL, NULL, &err_));
    EXPECT_FAIL("mc_app_stop(NULL app)", MC_ERR_NULL_ARGUMENT, "Argument app is NULL",
                mc_app_stop(NULL, &err_));
    EXPECT_FAIL("mc_app_wait(NULL app)", MC_ERR_NULL_ARGUMENT, "Argument app is NULL",
                mc_app_wait(NULL, &err_));
    check(out == SENTINEL_S, NULL, "failed calls leave their string out-parameter untouched");
    check(mc_error_code(NULL) == MC_ERR_NULL_ARGUMENT && mc_error_message(NULL) == NULL &&
              mc_state_name(NULL) == NULL && mc_state_address(NULL) == NULL &&
              mc_string_new(NULL) == NULL,
          NULL, "the infallible functions take NULL (code, message, state name/address, string)");
    mc_error_free(NULL);
    mc_string_free(NULL);
    mc_app_free(NULL);
    check(1, NULL, "the free functions ignore NULL");

    /* Invalid UTF-8. */
    const char *bad_utf8 = "/tmp/\xff\xfe";
    mc_app *other = SENTINEL;
    EXPECT_FAIL("mc_app_new(invalid UTF-8 state_dir)", MC_ERR_INVALID_UTF8,
                "Argument state_dir is not valid UTF-8", mc_app_new(bad_utf8, &other, &err_));
    check(other == SENTINEL, NULL, "... and leaves *out untouched");
    EXPECT_FAIL("mc_app_start(invalid UTF-8 args_json)", MC_ERR_INVALID_UTF8,
                "Argument args_json is not valid UTF-8",
                mc_app_start(app, "{\"version\": \"\xc3\x28\"}", NULL, &err_));
    EXPECT_FAIL("mc_app_new_cluster(invalid UTF-8 name)", MC_ERR_INVALID_UTF8,
                "Argument name is not valid UTF-8",
                mc_app_new_cluster(app, "c\x80", "127.0.0.1:1", NULL, &err_));
    EXPECT_FAIL("mc_app_sql(invalid UTF-8 query)", MC_ERR_INVALID_UTF8,
                "Argument query is not valid UTF-8", mc_app_sql(app, "SELECT '\xff'", &out, &err_));
    EXPECT_FAIL("mc_app_query(invalid UTF-8 path)", MC_ERR_INVALID_UTF8,
                "Argument path is not valid UTF-8",
                mc_app_query(app, "GET", "/1.0/\xfe", NULL, &out, &err_));
    char *replaced = mc_string_new("a\xff" "b");
    check(replaced != NULL && strcmp(replaced, "a\xef\xbf\xbd" "b") == 0, replaced,
          "mc_string_new replaces invalid UTF-8 with U+FFFD");
    mc_string_free(replaced);

    /* Invalid JSON and unknown keys. */
    EXPECT_FAIL("mc_app_start(truncated JSON)", MC_ERR_INVALID_ARGUMENT,
                "Argument args_json is not valid: EOF while parsing",
                mc_app_start(app, "{\"version\": ", NULL, &err_));
    EXPECT_FAIL("mc_app_start(not JSON)", MC_ERR_INVALID_ARGUMENT,
                "Argument args_json is not valid", mc_app_start(app, "version=1.0", NULL, &err_));
    EXPECT_FAIL("mc_app_start({} without version)", MC_ERR_INVALID_ARGUMENT,
                "missing field `version`", mc_app_start(app, "{}", NULL, &err_));
    EXPECT_FAIL("mc_app_start(unknown key)", MC_ERR_INVALID_ARGUMENT, "unknown field `heartbeat`",
                mc_app_start(app, "{\"version\": \"1.0\", \"heartbeat\": 5}", NULL, &err_));
    EXPECT_FAIL("mc_app_start(wrong type)", MC_ERR_INVALID_ARGUMENT, "expected a sequence",
                mc_app_start(app, "{\"version\": \"1.0\", \"schema_updates\": \"CREATE\"}", NULL,
                             &err_));
    EXPECT_FAIL("mc_app_start(extension servers without a handler)", MC_ERR_INVALID_ARGUMENT,
                "Extension servers need an endpoint handler (mc_hooks.endpoint)",
                mc_app_start(app,
                             "{\"version\": \"1.0\", \"extension_servers\": [{\"name\": "
                             "\"x.example.com\", \"resources\": [{\"path_prefix\": \"1.0\", "
                             "\"endpoints\": [{\"name\": \"e\", \"path\": \"e\"}]}]}]}",
                             NULL, &err_));
    mc_hooks endpoint_only_hooks = {0};
    endpoint_only_hooks.endpoint = endpoint;
    EXPECT_FAIL("mc_app_start(an access-checked action without an access handler)",
                MC_ERR_INVALID_ARGUMENT,
                "Actions with \"access_handler\" need an access handler "
                "(mc_hooks.endpoint_access)",
                mc_app_start(app,
                             "{\"version\": \"1.0\", \"extension_servers\": [{\"name\": "
                             "\"x.example.com\", \"resources\": [{\"path_prefix\": \"1.0\", "
                             "\"endpoints\": [{\"name\": \"e\", \"path\": \"e\", \"methods\": "
                             "{\"GET\": {\"access_handler\": true}}}]}]}]}",
                             &endpoint_only_hooks, &err_));
    EXPECT_FAIL("mc_app_new_cluster(config_json with a number)", MC_ERR_INVALID_ARGUMENT,
                "Argument config_json is not valid: invalid type: integer `42`, expected a string",
                mc_app_new_cluster(app, "c1", "127.0.0.1:1", "{\"answer\": 42}", &err_));
    EXPECT_FAIL("mc_app_new_cluster(config_json not JSON)", MC_ERR_INVALID_ARGUMENT,
                "Argument config_json is not valid",
                mc_app_new_cluster(app, "c1", "127.0.0.1:1", "{oops", &err_));
    EXPECT_FAIL("mc_app_query(body_json not JSON)", MC_ERR_INVALID_ARGUMENT,
                "Argument body_json is not valid",
                mc_app_query(app, "POST", "/1.0/x", "{oops", &out, &err_));

    /* Not started yet. */
    EXPECT_FAIL("mc_app_wait before any start", MC_ERR_INVALID_ARGUMENT, "not started",
                mc_app_wait(app, &err_));
    EXPECT_FAIL("mc_app_ready(0 ms) without a daemon", MC_ERR_TIMEOUT, "Timed out",
                mc_app_ready(app, 0, &err_));
    err = NULL;
    rc = mc_app_status(app, &out, &err);
    check(rc != MC_OK && err != NULL && mc_error_code(err) == rc && out == SENTINEL_S,
          err ? mc_error_message(err) : NULL,
          "mc_app_status without a daemon fails with a code and message (%u: %s)", (unsigned)rc,
          err ? mc_error_message(err) : "");
    mc_error_free(err);

    /* Log levels. */
    int levels[] = {0, 6, -1};
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "mc_log_set(level %d)", levels[i]);
        EXPECT_FAIL(what, MC_ERR_INVALID_ARGUMENT, "Invalid log level",
                    mc_log_set(NULL, NULL, levels[i], &err_));
    }

    /* Errors made by callbacks. */
    err = NULL;
    mc_error_set(&err, MC_ERR_NOT_FOUND, "no such thing");
    check(mc_error_code(err) == MC_ERR_NOT_FOUND && strcmp(mc_error_message(err), "no such thing") == 0,
          NULL, "mc_error_set stores code and message");
    mc_error_set(&err, 9999, "odd \xff code");
    check(mc_error_code(err) == MC_ERR_INTERNAL &&
              strcmp(mc_error_message(err), "odd \xef\xbf\xbd code") == 0,
          mc_error_message(err),
          "mc_error_set replaces the error, maps an unknown code to MC_ERR_INTERNAL, replaces bad UTF-8");
    mc_error_set(&err, MC_OK, NULL);
    check(mc_error_code(err) == MC_ERR_INTERNAL && strcmp(mc_error_message(err), "") == 0, NULL,
          "mc_error_set(MC_OK, NULL) stores MC_ERR_INTERNAL with an empty message");
    mc_error_set(NULL, MC_ERR_INTERNAL, "ignored");
    mc_error_free(err);

    /* A stopped app: each call gives its defined code; it starts again. */
    EXPECT_OK("mc_app_start of a plain daemon", mc_app_start(app, PLAIN_ARGS, NULL, &err_));
    EXPECT_OK("mc_app_ready", mc_app_ready(app, (int64_t)(wait_s * 1000), &err_));
    EXPECT_FAIL("mc_app_start while running", MC_ERR_CONFLICT, "already running",
                mc_app_start(app, PLAIN_ARGS, NULL, &err_));
    EXPECT_FAIL("mc_app_transaction before init", MC_ERR_UNAVAILABLE, "",
                mc_app_transaction(app, noop_tx, NULL, &err_));
    EXPECT_OK("mc_app_stop", mc_app_stop(app, &err_));
    EXPECT_OK("mc_app_wait after a clean stop gives MC_OK", mc_app_wait(app, &err_));
    EXPECT_FAIL("mc_app_ready on a stopped app", MC_ERR_UNAVAILABLE, "stopped",
                mc_app_ready(app, (int64_t)(wait_s * 1000), &err_));
    err = NULL;
    out = SENTINEL_S;
    rc = mc_app_status(app, &out, &err);
    check(rc != MC_OK && err != NULL && mc_error_code(err) == rc && out == SENTINEL_S,
          err ? mc_error_message(err) : NULL, "mc_app_status on a stopped app: %u: %s",
          (unsigned)rc, err ? mc_error_message(err) : "");
    mc_error_free(err);
    EXPECT_OK("mc_app_stop again on a stopped app", mc_app_stop(app, &err_));
    EXPECT_OK("mc_app_start again after the stop", mc_app_start(app, PLAIN_ARGS, NULL, &err_));
    EXPECT_OK("mc_app_ready again", mc_app_ready(app, (int64_t)(wait_s * 1000), &err_));

    /* A freed app: mc_app_free stops the daemon; the pointer is then set to NULL, which every
     * function refuses (the library cannot detect a use after free, as the header says). */
    mc_app_free(app);
    app = NULL;
    EXPECT_FAIL("mc_app_stop on a freed app (NULL)", MC_ERR_NULL_ARGUMENT, "Argument app is NULL",
                mc_app_stop(app, &err_));
    EXPECT_FAIL("mc_app_status on a freed app (NULL)", MC_ERR_NULL_ARGUMENT,
                "Argument app is NULL", mc_app_status(app, &out, &err_));
    mc_app_free(app);
    /* The freed app's daemon is gone: a new app on its state dir finds nothing serving. */
    other = NULL;
    err = NULL;
    rc = mc_app_new(dir, &other, &err);
    if (expect_ok("a new app on the freed app's state dir", rc, err)) {
        EXPECT_FAIL("... finds no daemon ready (mc_app_free stopped it)", MC_ERR_TIMEOUT,
                    "Timed out", mc_app_ready(other, 0, &err_));
        mc_app_free(other);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The cluster: three members in this process. */

#define MAX_EVENTS 128
#define EVENT_LEN 512

typedef struct member {
    const char *name;
    char dir[PATH_MAX];
    char address[32];
    mc_app *app;
    /* The hooks this member ran, "Hook args", in order (guarded by `lock`). */
    pthread_mutex_t lock;
    pthread_cond_t changed;
    char events[MAX_EVENTS][EVENT_LEN];
    int nevents;
    /* A blocking mc_app_* call made from OnStart and from the endpoint handler: its result. */
    atomic_int on_start_probe;
    atomic_int endpoint_probe;
    /* How often the handler of the access-checked endpoint ran. */
    atomic_int guarded_calls;
    /* PreJoin fails while set. */
    atomic_int fail_pre_join;
    /* PreInit takes long while set: at least 2 s, and until `released` (guarded by `lock`). */
    atomic_int slow_pre_init;
    int slow_entered;
    int released;
} member;

static void record(member *m, const char *hook, const char *args) {
    pthread_mutex_lock(&m->lock);
    if (m->nevents < MAX_EVENTS) {
        snprintf(m->events[m->nevents++], EVENT_LEN, "%s %s", hook, args);
    }
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
}

/* The index of the first event at or after `from` starting with `hook` and containing `words`
 * (NULL: any), or -1. */
static int find_event(member *m, int from, const char *hook, const char *words) {
    pthread_mutex_lock(&m->lock);
    int found = -1;
    size_t len = strlen(hook);
    for (int i = from < 0 ? 0 : from; i < m->nevents && found < 0; i++) {
        if (strncmp(m->events[i], hook, len) == 0 && m->events[i][len] == ' ' &&
            (words == NULL || strstr(m->events[i] + len, words) != NULL)) {
            found = i;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return found;
}

static int event_count(member *m) {
    pthread_mutex_lock(&m->lock);
    int n = m->nevents;
    pthread_mutex_unlock(&m->lock);
    return n;
}

static void print_events(member *m) {
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < m->nevents; i++) {
        printf("    %s: %s\n", m->name, m->events[i]);
    }
    pthread_mutex_unlock(&m->lock);
}

/* Waits (bounded) until `hook` with `words` is recorded at or after `from`; its index or -1. */
static int wait_event(member *m, int from, const char *hook, const char *words) {
    double deadline = now_s() + wait_s;
    int found;
    while ((found = find_event(m, from, hook, words)) < 0 && now_s() < deadline) {
        pause_ms(50);
    }
    return found;
}

static int hook(member *m, const char *name, const mc_state *state, const char *args,
                mc_error **err) {
    record(m, name, args);
    if (strcmp(name, "OnStart") == 0) {
        /* A blocking call from a hook must be refused, not deadlock. */
        char *json = NULL;
        mc_error *probe_err = NULL;
        mc_result rc = mc_app_status(m->app, &json, &probe_err);
        if (rc != MC_ERR_WOULD_BLOCK || !contains(mc_error_message(probe_err), "Blocking call")) {
            rc = MC_ERR_INTERNAL; /* wrong code or message */
        }
        atomic_store(&m->on_start_probe, (int)rc);
        mc_string_free(json);
        mc_error_free(probe_err);
        /* The state describes this member. */
        if (mc_state_name(state) == NULL || mc_state_address(state) == NULL) {
            mc_error_set(err, MC_ERR_INTERNAL, "no state name or address");
            return 1;
        }
    }
    if (strcmp(name, "PreInit") == 0 && atomic_load(&m->slow_pre_init)) {
        double until = now_s() + 2;
        pthread_mutex_lock(&m->lock);
        m->slow_entered = 1;
        pthread_cond_broadcast(&m->changed);
        pthread_mutex_unlock(&m->lock);
        /* The deliberately long callback: 2 s, and until the test has seen the daemon answer. */
        double now;
        while ((now = now_s()) < until) {
            pause_ms((long)((until - now) * 1000) + 1);
        }
        double deadline = now_s() + wait_s;
        pthread_mutex_lock(&m->lock);
        while (!m->released && now_s() < deadline) {
            pthread_mutex_unlock(&m->lock);
            pause_ms(20);
            pthread_mutex_lock(&m->lock);
        }
        pthread_mutex_unlock(&m->lock);
    }
    if (strcmp(name, "PreJoin") == 0 && atomic_load(&m->fail_pre_join)) {
        mc_error_set(err, MC_ERR_INVALID_ARGUMENT, "PreJoin refused by mctest");
        return 1;
    }
    return 0;
}

#define HOOK(fn, label)                                                                   \
    static int fn(void *u, const mc_state *s, const char *a, mc_error **e) {              \
        return hook(u, label, s, a, e);                                                   \
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

static int count_items(void *userdata, mc_tx *tx, mc_error **err) {
    long long *count = userdata;
    char *rows = NULL;
    if (mc_tx_query(tx, "SELECT count(*) FROM items", NULL, &rows, err) != MC_OK) {
        return 1;
    }
    const char *cell = strstr(rows, "[[");
    int ok = cell != NULL && sscanf(cell, "[[%lld", count) == 1;
    mc_string_free(rows);
    if (!ok) {
        mc_error_set(err, MC_ERR_INTERNAL, "unexpected rows from count(*)");
    }
    return !ok;
}

/*
 * The extension endpoint, GET/POST /1.0/echo/{word}: answers {"word", "served_by", "items",
 * "request"}; "fail" answers 404 with a message, "silent" fails without an error (500). It
 * also checks that a blocking mc_app_* call is refused there.
 */
static int endpoint(void *userdata, const mc_state *state, const char *server,
                    const char *name, const char *request_json, char **response_json,
                    mc_error **err) {
    member *m = userdata;
    char *json = NULL;
    mc_error *probe_err = NULL;
    mc_result probe = mc_app_cluster_members(m->app, &json, &probe_err);
    atomic_store(&m->endpoint_probe, (int)probe);
    mc_string_free(json);
    mc_error_free(probe_err);
    if (strcmp(server, "mctest.example.com") == 0 && strcmp(name, "guarded") == 0) {
        atomic_fetch_add(&m->guarded_calls, 1);
        *response_json = mc_string_new("{\"guarded\":true}");
        return 0;
    }
    if (strcmp(server, "mctest.example.com") != 0 || strcmp(name, "echo") != 0) {
        mc_error_set(err, MC_ERR_INTERNAL, "unexpected server or endpoint");
        return 1;
    }
    if (contains(request_json, "\"vars\":{\"word\":\"fail\"}")) {
        mc_error_set(err, MC_ERR_NOT_FOUND, "no such word: fail");
        return 1;
    }
    if (contains(request_json, "\"vars\":{\"word\":\"silent\"}")) {
        return 1;
    }
    long long items = -1;
    if (mc_state_transaction(state, count_items, &items, err) != MC_OK) {
        return 1;
    }
    size_t size = strlen(request_json) + 256;
    char *response = malloc(size);
    if (response == NULL) {
        mc_error_set(err, MC_ERR_INTERNAL, "out of memory");
        return 1;
    }
    snprintf(response, size, "{\"served_by\":\"%s\",\"items\":%lld,\"request\":%s}",
             mc_state_name(state), items, request_json);
    *response_json = mc_string_new(response);
    free(response);
    return 0;
}

/*
 * The access check of GET /1.0/guarded/{word}: "allow" lets it on, "refuse" answers 403 with
 * a message of its own, anything else is not authorized.
 */
static int endpoint_access(void *userdata, const mc_state *state, const char *server,
                           const char *name, const char *request_json, int *allowed,
                           mc_error **err) {
    (void)userdata;
    (void)state;
    if (strcmp(server, "mctest.example.com") != 0 || strcmp(name, "guarded") != 0) {
        mc_error_set(err, MC_ERR_INTERNAL, "unexpected access check");
        return 1;
    }
    if (contains(request_json, "\"vars\":{\"word\":\"refuse\"}")) {
        mc_error_set(err, MC_ERR_FORBIDDEN, "refused by the access handler");
        return 1;
    }
    *allowed = contains(request_json, "\"vars\":{\"word\":\"allow\"}");
    return 0;
}

static const char *CLUSTER_ARGS =
    "{\"version\": \"1.0\", \"schema_updates\": ["
    "\"CREATE TABLE items (id INTEGER PRIMARY KEY, member TEXT NOT NULL, i INTEGER, r REAL,"
    " t TEXT, b BLOB, n INTEGER)\","
    "\"CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)\"],"
    " \"extension_servers\": [{\"name\": \"mctest.example.com\", \"core_api\": true,"
    " \"serve_unix\": true, \"resources\": [{\"path_prefix\": \"1.0\", \"endpoints\": ["
    " {\"name\": \"echo\", \"path\": \"echo/{word}\", \"methods\": {"
    " \"GET\": {\"proxy_target\": true}, \"POST\": {\"proxy_target\": true}}},"
    " {\"name\": \"guarded\", \"path\": \"guarded/{word}\", \"methods\": {"
    " \"GET\": {\"access_handler\": true}}}]}]}]}";

/* Log events, from any library thread. */
static atomic_int log_events;
static atomic_int log_ready_seen;
static atomic_int log_bad_level;

static void on_log(void *userdata, int level, const char *target, const char *message) {
    (void)userdata;
    if (level < 1 || level > 3 || target == NULL || message == NULL) {
        atomic_store(&log_bad_level, 1);
    }
    atomic_fetch_add(&log_events, 1);
    if (message != NULL && strstr(message, "Daemon is ready") != NULL) {
        atomic_store(&log_ready_seen, 1);
    }
}

/* Transactions. */

typedef struct item_write {
    const char *params;
    int runs;
} item_write;

static int write_item(void *userdata, mc_tx *tx, mc_error **err) {
    item_write *w = userdata;
    w->runs++;
    int64_t changed = -1;
    if (mc_tx_execute(tx, "INSERT INTO items (id, member, i, r, t, b, n) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                      w->params, &changed, err) != MC_OK) {
        return 1;
    }
    if (changed != 1) {
        mc_error_set(err, MC_ERR_INTERNAL, "the INSERT changed no row");
        return 1;
    }
    return 0;
}

typedef struct read_rows {
    const char *sql;
    const char *params;
    char *rows; /* from mc_tx_query, freed by the test */
} read_rows;

static int read_tx(void *userdata, mc_tx *tx, mc_error **err) {
    read_rows *r = userdata;
    mc_string_free(r->rows); /* a run before a retry */
    r->rows = NULL;
    return mc_tx_query(tx, r->sql, r->params, &r->rows, err) != MC_OK;
}

static int increment(void *userdata, mc_tx *tx, mc_error **err) {
    (void)userdata;
    char *rows = NULL;
    if (mc_tx_query(tx, "SELECT value FROM counters WHERE name = ?1", "[\"hits\"]", &rows, err) !=
        MC_OK) {
        return 1;
    }
    long long value = 0;
    const char *cell = strstr(rows, "[[");
    if (cell != NULL) {
        sscanf(cell, "[[%lld", &value);
    }
    mc_string_free(rows);
    char params[64];
    snprintf(params, sizeof params, "[\"hits\", %lld]", value + 1);
    int64_t changed = 0;
    if (mc_tx_execute(tx,
                      "INSERT INTO counters (name, value) VALUES (?1, ?2) "
                      "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                      params, &changed, err) != MC_OK) {
        return 1;
    }
    return changed == 1 ? 0 : 1;
}

#define INCREMENTS 5

typedef struct incrementer {
    const mc_app *app;
    int failures;
    char message[256];
} incrementer;

static void *increment_thread(void *arg) {
    incrementer *inc = arg;
    for (int i = 0; i < INCREMENTS; i++) {
        mc_error *err = NULL;
        if (mc_app_transaction(inc->app, increment, NULL, &err) != MC_OK) {
            inc->failures++;
            snprintf(inc->message, sizeof inc->message, "%s", mc_error_message(err));
        }
        mc_error_free(err);
    }
    return NULL;
}

static int blocking_in_tx(void *userdata, mc_tx *tx, mc_error **err) {
    (void)tx;
    char *json = NULL;
    mc_result rc = mc_app_sql(userdata, "SELECT 1", &json, err);
    mc_string_free(json);
    return rc != MC_OK;
}

static int failing_tx(void *userdata, mc_tx *tx, mc_error **err) {
    (void)userdata;
    int64_t changed = 0;
    if (mc_tx_execute(tx, "INSERT INTO items (id, member) VALUES (99, 'never')", NULL, &changed,
                      err) != MC_OK) {
        return 1;
    }
    mc_error_set(err, MC_ERR_NOT_FOUND, "nothing to see");
    return 1;
}

static int silent_failing_tx(void *userdata, mc_tx *tx, mc_error **err) {
    (void)userdata;
    (void)tx;
    (void)err;
    return 7;
}

static int bad_sql_tx(void *userdata, mc_tx *tx, mc_error **err) {
    const char *which = userdata;
    char *rows = NULL;
    mc_result rc;
    if (strcmp(which, "ddl") == 0) {
        rc = mc_tx_execute(tx, "CREATE TABLE t (id INTEGER PRIMARY KEY)", NULL, NULL, err);
    } else if (strcmp(which, "params") == 0) {
        rc = mc_tx_query(tx, "SELECT ?1", "{\"not\": \"an array\"}", &rows, err);
    } else if (strcmp(which, "utf8") == 0) {
        rc = mc_tx_query(tx, "SELECT '\xff'", NULL, &rows, err);
    } else if (strcmp(which, "null") == 0) {
        rc = mc_tx_query(tx, NULL, NULL, &rows, err);
    } else {
        rc = mc_tx_query(tx, "SELEKT 1", NULL, &rows, err);
    }
    mc_string_free(rows);
    return rc != MC_OK;
}

/* Polls the members as `m` sees them until `pred` holds (bounded); the last JSON (to free). */
static char *wait_members(member *m, int (*pred)(const char *json), mc_result *last_rc) {
    double deadline = now_s() + wait_s;
    char *json = NULL;
    for (;;) {
        mc_error *err = NULL;
        mc_string_free(json);
        json = NULL;
        *last_rc = mc_app_cluster_members(m->app, &json, &err);
        mc_error_free(err);
        if ((*last_rc == MC_OK && pred(json)) || now_s() >= deadline) {
            return json;
        }
        pause_ms(200);
    }
}

static int three_online(const char *json) {
    return contains(json, "\"name\":\"c1\"") && contains(json, "\"name\":\"c2\"") &&
           contains(json, "\"name\":\"c3\"") && count_of(json, "\"status\":\"ONLINE\"") == 3;
}

static int c3_gone(const char *json) {
    return contains(json, "\"name\":\"c1\"") && contains(json, "\"name\":\"c2\"") &&
           !contains(json, "\"name\":\"c3\"");
}

typedef struct bootstrap_call {
    member *m;
    mc_result rc;
    char message[512];
} bootstrap_call;

static void *bootstrap_thread(void *arg) {
    bootstrap_call *call = arg;
    mc_error *err = NULL;
    call->rc = mc_app_new_cluster(call->m->app, call->m->name, call->m->address,
                                  "{\"role\": \"first\"}", &err);
    snprintf(call->message, sizeof call->message, "%s", err ? mc_error_message(err) : "");
    mc_error_free(err);
    return NULL;
}

/* Issues a join token for `name` on `m`; NULL on failure (reported). */
static char *issue_token(member *m, const char *name) {
    char *token = NULL;
    mc_error *err = NULL;
    mc_result rc = mc_app_new_join_token(m->app, name, 0, &token, &err);
    char what[64];
    snprintf(what, sizeof what, "%s issues a join token for %s", m->name, name);
    if (!expect_ok(what, rc, err)) {
        return NULL;
    }
    return token;
}

static void test_cluster(const char *root) {
    static member members[3];
    static const char *names[] = {"c1", "c2", "c3"};
    member *c1 = &members[0], *c2 = &members[1], *c3 = &members[2];
    char *json = NULL;
    mc_error *err = NULL;
    mc_result rc;
    int64_t wait_ms = (int64_t)(wait_s * 1000);

    EXPECT_OK("mc_log_set(info) installs the log callback",
              mc_log_set(on_log, NULL, 3, &err_));

    /* Three apps, each with its state dir, address and hooks. */
    for (int i = 0; i < 3; i++) {
        member *m = &members[i];
        m->name = names[i];
        snprintf(m->dir, sizeof m->dir, "%s/%s", root, m->name);
        pthread_mutex_init(&m->lock, NULL);
        pthread_cond_init(&m->changed, NULL);
        atomic_store(&m->on_start_probe, -1);
        atomic_store(&m->endpoint_probe, -1);
        check(free_address(m->address, sizeof m->address), NULL, "a free port for %s", m->name);
        err = NULL;
        rc = mc_app_new(m->dir, &m->app, &err);
        if (!expect_ok(m->name, rc, err)) {
            return;
        }
        mc_hooks hooks = {0};
        hooks.userdata = m;
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
        hooks.endpoint_access = endpoint_access;
        char what[64];
        snprintf(what, sizeof what, "mc_app_start %s", m->name);
        EXPECT_OK(what, mc_app_start(m->app, CLUSTER_ARGS, &hooks, &err_));
    }
    for (int i = 0; i < 3; i++) {
        char what[64];
        snprintf(what, sizeof what, "%s is ready", members[i].name);
        EXPECT_OK(what, mc_app_ready(members[i].app, wait_ms, &err_));
        check(atomic_load(&members[i].on_start_probe) == MC_ERR_WOULD_BLOCK, NULL,
              "a blocking call from %s's OnStart hook gives MC_ERR_WOULD_BLOCK (\"Blocking call\")",
              members[i].name);
    }
    check(atomic_load(&log_events) > 0 && atomic_load(&log_ready_seen), NULL,
          "log events reach the mc_log_set callback (%d so far, \"Daemon is ready\" among them)",
          atomic_load(&log_events));
    EXPECT_OK("mc_log_set(error) lowers the level", mc_log_set(on_log, NULL, 1, &err_));
    EXPECT_OK("mc_log_set(info) raises it again", mc_log_set(on_log, NULL, 3, &err_));

    /* Bootstrap through a slow PreInit hook: the daemon answers meanwhile. */
    atomic_store(&c1->slow_pre_init, 1);
    bootstrap_call boot = {.m = c1};
    double started = now_s();
    pthread_t booter;
    pthread_create(&booter, NULL, bootstrap_thread, &boot);
    pthread_mutex_lock(&c1->lock);
    double deadline = now_s() + wait_s;
    while (!c1->slow_entered && now_s() < deadline) {
        pthread_mutex_unlock(&c1->lock);
        pause_ms(20);
        pthread_mutex_lock(&c1->lock);
    }
    int entered = c1->slow_entered;
    pthread_mutex_unlock(&c1->lock);
    check(entered, NULL, "c1's slow PreInit hook runs");
    json = NULL;
    err = NULL;
    rc = mc_app_status(c1->app, &json, &err);
    if (expect_ok("c1 answers mc_app_status while its PreInit hook takes long", rc, err)) {
        /* Not initialised until the bootstrap completes, so not ready (SPEC 2.3). */
        check(contains(json, "\"ready\":false"), json, "... and says it is not ready yet");
    }
    mc_string_free(json);
    pthread_mutex_lock(&c1->lock);
    c1->released = 1;
    pthread_mutex_unlock(&c1->lock);
    pthread_join(booter, NULL);
    check(boot.rc == MC_OK, boot.message, "c1 bootstraps (code %u)", (unsigned)boot.rc);
    check(now_s() - started >= 2.0, NULL, "... after the 2 s hook completed");
    atomic_store(&c1->slow_pre_init, 0);

    /* Tokens: issue, list, revoke. */
    char *token9 = issue_token(c1, "c9");
    mc_string_free(token9);
    json = NULL;
    err = NULL;
    rc = mc_app_join_tokens(c1->app, &json, &err);
    if (expect_ok("mc_app_join_tokens", rc, err)) {
        check(contains(json, "\"name\":\"c9\"") && contains(json, "\"token\":\"\""), json,
              "the token list names c9 (and hides the token)");
    }
    mc_string_free(json);
    EXPECT_OK("mc_app_revoke_join_token c9", mc_app_revoke_join_token(c1->app, "c9", &err_));
    EXPECT_FAIL("revoking it again", MC_ERR_NOT_FOUND, "",
                mc_app_revoke_join_token(c1->app, "c9", &err_));
    EXPECT_FAIL("joining with a bogus token", MC_ERR_INVALID_ARGUMENT, "",
                mc_app_join_cluster(c2->app, "c2", c2->address, "bm90IGEgdG9rZW4=", NULL, &err_));

    /* c2 joins. */
    char *token = issue_token(c1, "c2");
    if (token != NULL) {
        EXPECT_OK("c2 joins", mc_app_join_cluster(c2->app, "c2", c2->address, token, NULL, &err_));
    }
    mc_string_free(token);

    /* c3's PreJoin refuses: the join fails with the hook's message; fixed, it joins. */
    atomic_store(&c3->fail_pre_join, 1);
    token = issue_token(c1, "c3");
    if (token != NULL) {
        EXPECT_FAIL("c3's join fails with its PreJoin hook's message", MC_ERR_INVALID_ARGUMENT,
                    "PreJoin refused by mctest",
                    mc_app_join_cluster(c3->app, "c3", c3->address, token, NULL, &err_));
    }
    mc_string_free(token);
    atomic_store(&c3->fail_pre_join, 0);
    int c3_retry_from = event_count(c3);
    mc_app_revoke_join_token(c1->app, "c3", NULL); /* if the failed join left it */
    EXPECT_OK("c3 is ready after the rolled-back join", mc_app_ready(c3->app, wait_ms, &err_));
    token = issue_token(c1, "c3");
    if (token != NULL) {
        EXPECT_OK("c3 joins on retry once PreJoin succeeds",
                  mc_app_join_cluster(c3->app, "c3", c3->address, token, NULL, &err_));
    }
    mc_string_free(token);

    mc_result last;
    json = wait_members(c3, three_online, &last);
    check(last == MC_OK && three_online(json), json, "c3 lists c1, c2, c3, all ONLINE");
    mc_string_free(json);

    /* Transactions with bound parameters from c1 and c2, read back on c3. */
    item_write w1 = {"[1, \"c1\", 42, 2.5, \"from c1\", {\"blob_base64\": \"AAEC/w==\"}, null]", 0};
    item_write w2 = {"[2, \"c2\", -7, 0.25, \"h\xc3\xa9llo from c2\", null, true]", 0};
    EXPECT_OK("a transaction on c1 writes an item (bound parameters)",
              mc_app_transaction(c1->app, write_item, &w1, &err_));
    EXPECT_OK("a transaction on c2 writes an item", mc_app_transaction(c2->app, write_item, &w2, &err_));
    check(w1.runs >= 1 && w2.runs >= 1, NULL, "the transaction functions ran");
    read_rows r = {"SELECT id, member, i, r, t, b, n FROM items WHERE id IN (?1, ?2) ORDER BY id",
                   "[1, 2]", NULL};
    err = NULL;
    rc = mc_app_transaction(c3->app, read_tx, &r, &err);
    if (expect_ok("a transaction on c3 reads them", rc, err)) {
        check(contains(r.rows, "\"rows\":[[1,\"c1\",42,2.5,\"from c1\",{\"blob_base64\":"
                               "\"AAEC/w==\"},null],[2,\"c2\",-7,0.25,\"h\xc3\xa9llo from c2\",null,1]]") &&
                  contains(r.rows, "\"columns\":[\"id\",\"member\",\"i\",\"r\",\"t\",\"b\",\"n\"]"),
              r.rows, "c3 reads both members' items back with every type");
    }
    mc_string_free(r.rows);
    json = NULL;
    err = NULL;
    rc = mc_app_sql(c3->app, "SELECT member FROM items ORDER BY id", &json, &err);
    if (expect_ok("mc_app_sql on c3", rc, err)) {
        check(contains(json, "[[\"c1\"],[\"c2\"]]"), json, "... sees both items");
    }
    mc_string_free(json);
    EXPECT_FAIL("mc_app_sql with bad SQL", MC_ERR_INVALID_ARGUMENT, "",
                mc_app_sql(c3->app, "SELEKT 1", &json, &err_));

    /* A counter incremented concurrently from two threads on two members ends exact. */
    incrementer i1 = {c1->app, 0, ""}, i2 = {c2->app, 0, ""};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, increment_thread, &i1);
    pthread_create(&t2, NULL, increment_thread, &i2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    check(i1.failures == 0 && i2.failures == 0, i1.failures ? i1.message : i2.message,
          "%d concurrent increments on c1 and %d on c2 commit", INCREMENTS, INCREMENTS);
    read_rows counter = {"SELECT value FROM counters WHERE name = ?1", "[\"hits\"]", NULL};
    char expected[64];
    snprintf(expected, sizeof expected, "\"rows\":[[%d]]", 2 * INCREMENTS);
    err = NULL;
    rc = mc_app_transaction(c3->app, read_tx, &counter, &err);
    if (expect_ok("c3 reads the counter", rc, err)) {
        check(contains(counter.rows, expected), counter.rows, "the counter is exactly %d",
              2 * INCREMENTS);
    }
    mc_string_free(counter.rows);

    /* Transaction functions: blocking calls, errors, refused statements; nothing kept. */
    EXPECT_FAIL("a blocking mc_app_sql inside a transaction function", MC_ERR_WOULD_BLOCK,
                "Blocking call", mc_app_transaction(c1->app, blocking_in_tx, c1->app, &err_));
    EXPECT_FAIL("a transaction function's own error reaches the caller", MC_ERR_NOT_FOUND,
                "nothing to see", mc_app_transaction(c1->app, failing_tx, NULL, &err_));
    EXPECT_FAIL("a transaction function failing without an error", MC_ERR_INTERNAL,
                "The transaction function failed (returned 7) without setting an error",
                mc_app_transaction(c1->app, silent_failing_tx, NULL, &err_));
    EXPECT_FAIL("DDL in a transaction", MC_ERR_INVALID_ARGUMENT, "Schema changes",
                mc_app_transaction(c1->app, bad_sql_tx, "ddl", &err_));
    EXPECT_FAIL("params_json not an array", MC_ERR_INVALID_ARGUMENT, "params_json",
                mc_app_transaction(c1->app, bad_sql_tx, "params", &err_));
    /* Codes without an HTTP class (NULL argument, invalid UTF-8) leave a transaction function
     * as that class, MC_ERR_INVALID_ARGUMENT (see mc_error_set), with their message. */
    EXPECT_FAIL("invalid UTF-8 SQL in a transaction", MC_ERR_INVALID_ARGUMENT,
                "Argument sql is not valid UTF-8",
                mc_app_transaction(c1->app, bad_sql_tx, "utf8", &err_));
    EXPECT_FAIL("NULL SQL in a transaction", MC_ERR_INVALID_ARGUMENT, "Argument sql is NULL",
                mc_app_transaction(c1->app, bad_sql_tx, "null", &err_));
    EXPECT_FAIL("bad SQL in a transaction", MC_ERR_INVALID_ARGUMENT, "",
                mc_app_transaction(c1->app, bad_sql_tx, "syntax", &err_));
    read_rows none = {"SELECT count(*) FROM items WHERE id = 99", NULL, NULL};
    err = NULL;
    rc = mc_app_transaction(c2->app, read_tx, &none, &err);
    if (expect_ok("reading after the failed transactions", rc, err)) {
        check(contains(none.rows, "\"rows\":[[0]]"), none.rows,
              "nothing of a failed transaction was kept");
    }
    mc_string_free(none.rows);

    /* The extension endpoint of c1, called through c2's control socket with ?target=c1. */
    json = NULL;
    err = NULL;
    rc = mc_app_query(c2->app, "GET", "/1.0/echo/hello?target=c1", NULL, &json, &err);
    if (expect_ok("GET /1.0/echo/hello?target=c1 through c2", rc, err)) {
        check(contains(json, "\"served_by\":\"c1\"") && contains(json, "\"items\":2") &&
                  contains(json, "\"vars\":{\"word\":\"hello\"}"),
              json, "c1's handler answers from its database");
        check(contains(json, "\"trusted\":true") && contains(json, "\"kind\":\"member\"") &&
                  contains(json, "\"name\":\"c2\""),
              json, "c1's handler saw c2 as a trusted member caller (mTLS)");
    }
    mc_string_free(json);
    check(atomic_load(&c1->endpoint_probe) == MC_ERR_WOULD_BLOCK, NULL,
          "a blocking call from the endpoint handler gives MC_ERR_WOULD_BLOCK");
    json = NULL;
    err = NULL;
    rc = mc_app_query(c2->app, "POST", "/1.0/echo/posted?target=c1", "{\"x\": [1, \"two\"]}",
                      &json, &err);
    if (expect_ok("POST with a JSON body through c2 to c1", rc, err)) {
        check(contains(json, "\"body\":{\"x\":[1,\"two\"]}") && contains(json, "\"method\":\"POST\""),
              json, "the handler receives the body");
    }
    mc_string_free(json);
    json = NULL;
    err = NULL;
    rc = mc_app_query(c2->app, "GET", "/1.0/echo/local", NULL, &json, &err);
    if (expect_ok("GET /1.0/echo/local on c2 itself", rc, err)) {
        check(contains(json, "\"served_by\":\"c2\"") && contains(json, "\"kind\":\"control_socket\""),
              json, "c2's handler answers its own control socket");
    }
    mc_string_free(json);
    EXPECT_FAIL("a handler's 404 reaches mc_app_query with its message", MC_ERR_NOT_FOUND,
                "no such word: fail",
                mc_app_query(c2->app, "GET", "/1.0/echo/fail?target=c1", NULL, &json, &err_));
    EXPECT_FAIL("a handler failing without an error is a 500", MC_ERR_INTERNAL, "",
                mc_app_query(c2->app, "GET", "/1.0/echo/silent?target=c1", NULL, &json, &err_));
    EXPECT_FAIL("an unknown path is a 404", MC_ERR_NOT_FOUND, "",
                mc_app_query(c2->app, "GET", "/1.0/nowhere", NULL, &json, &err_));
    EXPECT_FAIL("an undeclared method is refused", MC_ERR_NOT_IMPLEMENTED, "",
                mc_app_query(c2->app, "PUT", "/1.0/echo/x", "{}", &json, &err_));
    EXPECT_FAIL("an unknown ?target= is a 400 (SPEC 5.6)", MC_ERR_INVALID_ARGUMENT,
                "Failed to get cluster member for request target name \"c7\"",
                mc_app_query(c2->app, "GET", "/1.0/echo/x?target=c7", NULL, &json, &err_));

    /* The access handler of GET /1.0/guarded/{word}, on c2's control socket. */
    json = NULL;
    err = NULL;
    rc = mc_app_query(c2->app, "GET", "/1.0/guarded/allow", NULL, &json, &err);
    if (expect_ok("GET /1.0/guarded/allow", rc, err)) {
        check(contains(json, "\"guarded\":true"), json, "an allowed request reaches the handler");
    }
    mc_string_free(json);
    EXPECT_FAIL("a request the access handler does not allow is a 403", MC_ERR_FORBIDDEN,
                "not authorized",
                mc_app_query(c2->app, "GET", "/1.0/guarded/other", NULL, &json, &err_));
    EXPECT_FAIL("an access handler's error reaches the caller", MC_ERR_FORBIDDEN,
                "refused by the access handler",
                mc_app_query(c2->app, "GET", "/1.0/guarded/refuse", NULL, &json, &err_));
    check(atomic_load(&c2->guarded_calls) == 1, NULL,
          "the handler ran for the allowed request only (%d times)",
          atomic_load(&c2->guarded_calls));

    /* Hook order, per member. */
    int ok1 = find_event(c1, 0, "OnStart", NULL) >= 0 &&
              find_event(c1, 0, "OnStart", NULL) < find_event(c1, 0, "PreInit", "\"bootstrap\":true") &&
              find_event(c1, 0, "PreInit", "\"role\":\"first\"") <
                  find_event(c1, 0, "PostBootstrap", "\"role\":\"first\"") &&
              find_event(c1, 0, "PostBootstrap", NULL) <
                  find_event(c1, 0, "OnNewMember", "\"name\":\"c2\"") &&
              find_event(c1, 0, "OnNewMember", "\"name\":\"c2\"") <
                  find_event(c1, 0, "OnNewMember", "\"name\":\"c3\"") &&
              find_event(c1, 0, "PreJoin", NULL) < 0 && find_event(c1, 0, "PostJoin", NULL) < 0;
    check(ok1, NULL, "c1 ran OnStart, PreInit(bootstrap, config), PostBootstrap, OnNewMember c2, c3");
    int pre_init2 = find_event(c2, 0, "PreInit", "\"bootstrap\":false");
    int ok2 = find_event(c2, 0, "OnStart", NULL) >= 0 &&
              find_event(c2, 0, "OnStart", NULL) < pre_init2 &&
              pre_init2 < find_event(c2, 0, "PreJoin", NULL) &&
              find_event(c2, 0, "PreJoin", NULL) < find_event(c2, 0, "PostJoin", NULL) &&
              find_event(c2, 0, "PostJoin", NULL) < find_event(c2, 0, "OnNewMember", "\"name\":\"c3\"") &&
              find_event(c2, 0, "PostBootstrap", NULL) < 0;
    check(ok2, NULL, "c2 ran OnStart, PreInit(join), PreJoin, PostJoin, then OnNewMember c3");
    int pre_init3 = find_event(c3, c3_retry_from, "PreInit", "\"bootstrap\":false");
    int ok3 = find_event(c3, 0, "PreJoin", NULL) >= 0 &&
              find_event(c3, 0, "PreJoin", NULL) < c3_retry_from && pre_init3 >= 0 &&
              pre_init3 < find_event(c3, pre_init3, "PreJoin", NULL) &&
              find_event(c3, pre_init3, "PreJoin", NULL) < find_event(c3, pre_init3, "PostJoin", NULL) &&
              find_event(c3, 0, "OnNewMember", NULL) < 0;
    check(ok3, NULL, "c3 ran PreJoin (refused), then on retry PreInit, PreJoin, PostJoin");
    if (!ok1 || !ok2 || !ok3) {
        print_events(c1);
        print_events(c2);
        print_events(c3);
    }

    /* Removal of c3, asked on c1: PreRemove on c3, PostRemove on c1 and c2. */
    int from[3];
    for (int i = 0; i < 3; i++) {
        from[i] = event_count(&members[i]);
    }
    err = NULL;
    rc = mc_app_remove_cluster_member(c1->app, "nonexist", 0, NULL, &err);
    expect_fail("removing an unknown member", rc, err, MC_ERR_NOT_FOUND, "nonexist");
    err = NULL;
    rc = mc_app_remove_cluster_member(c1->app, "c3", 0, NULL, &err);
    expect_ok("c1 removes c3 (mc_app_remove_cluster_member)", rc, err);
    check(find_event(c3, from[2], "PreRemove", "\"force\":false") >= 0, NULL,
          "c3 ran PreRemove(force=false)");
    check(wait_event(c1, from[0], "PostRemove", "\"force\":false") >= 0 &&
              wait_event(c2, from[1], "PostRemove", "\"force\":false") >= 0,
          NULL, "c1 and c2 ran PostRemove(force=false)");
    check(find_event(c1, from[0], "PreRemove", NULL) < 0 &&
              find_event(c3, from[2], "PostRemove", NULL) < 0,
          NULL, "PreRemove ran on the removed member only, PostRemove on the remaining ones");
    json = wait_members(c1, c3_gone, &last);
    check(last == MC_OK && c3_gone(json), json, "c1 lists c1 and c2 only");
    mc_string_free(json);
    check(wait_event(c3, from[2], "OnStart", NULL) >= 0, NULL,
          "the removed c3 resets and runs OnStart again");
    EXPECT_FAIL("c3, reset, has no database", MC_ERR_UNAVAILABLE, "",
                mc_app_cluster_members(c3->app, &json, &err_));

    /* Stop and free all three. */
    for (int i = 2; i >= 0; i--) {
        member *m = &members[i];
        char what[96];
        snprintf(what, sizeof what, "mc_app_stop %s", m->name);
        EXPECT_OK(what, mc_app_stop(m->app, &err_));
        snprintf(what, sizeof what, "mc_app_wait %s: a clean end", m->name);
        EXPECT_OK(what, mc_app_wait(m->app, &err_));
    }
    /* c1, stopped: the calls that need its daemon give their defined codes. */
    EXPECT_FAIL("mc_app_ready on stopped c1", MC_ERR_UNAVAILABLE, "stopped",
                mc_app_ready(c1->app, wait_ms, &err_));
    EXPECT_FAIL("mc_app_transaction on stopped c1", MC_ERR_UNAVAILABLE, "",
                mc_app_transaction(c1->app, noop_tx, NULL, &err_));
    err = NULL;
    json = NULL;
    rc = mc_app_new_join_token(c1->app, "c4", 0, &json, &err);
    check(rc != MC_OK && err != NULL && mc_error_code(err) == rc && json == NULL,
          err ? mc_error_message(err) : NULL, "mc_app_new_join_token on stopped c1: %u: %s",
          (unsigned)rc, err ? mc_error_message(err) : "");
    mc_error_free(err);
    for (int i = 0; i < 3; i++) {
        mc_app_free(members[i].app);
        members[i].app = NULL;
    }
    check(1, NULL, "the three apps are freed");
    EXPECT_OK("mc_log_set(NULL) stops the log events", mc_log_set(NULL, NULL, 3, &err_));
    for (int i = 0; i < 3; i++) {
        pthread_mutex_destroy(&members[i].lock);
        pthread_cond_destroy(&members[i].changed);
    }
}

int main(int argc, char **argv) {
    const char *part = argc > 1 ? argv[1] : "all";
    if (argc > 2 || (strcmp(part, "all") != 0 && strcmp(part, "bad") != 0 &&
                     strcmp(part, "cluster") != 0)) {
        fprintf(stderr, "usage: mctest [bad|cluster|all]\n");
        return 2;
    }
    const char *env = getenv("MCTEST_WAIT_S");
    if (env != NULL && atof(env) > 0) {
        wait_s = atof(env);
    }
    check(strcmp(mc_version(), MC_VERSION) == 0 && mc_version_number() == MC_VERSION_NUMBER, NULL,
          "the library is version %s, like the header", MC_VERSION);
    char root[] = "/tmp/mctest.XXXXXX";
    if (mkdtemp(root) == NULL) {
        perror("mctest: mkdtemp");
        return 1;
    }
    double started = now_s();
    if (strcmp(part, "cluster") != 0) {
        test_bad_input(root);
    }
    if (strcmp(part, "bad") != 0) {
        test_cluster(root);
    }
    remove_tree(root);
    printf("mctest %s: %.1f s\n", part, now_s() - started);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
