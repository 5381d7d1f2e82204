/* The command line (SPEC.md section 1). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "conf/config.h"
#include "proxy/proxy.h"
#include "tls/tls.h"

static const char usage_text[] =
    "usage: gatehouse [-c FILE]             run in the foreground\n"
    "       gatehouse -t [-c FILE]          check FILE and exit\n"
    "       gatehouse -s reload|stop [-c FILE]  signal the running instance (pid_file)\n"
    "       gatehouse keygen                print a new API key or tunnel token and its hash\n"
    "       gatehouse hash-key              print the sha256: hash of a secret read from stdin\n"
    "       gatehouse --version | --help\n"
    "\n"
    "FILE defaults to " GH_DEFAULT_CONFIG ".\n";

static void sha256_hex(const unsigned char *data, size_t len, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

static int cmd_keygen(void)
{
    static const char b64url[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char raw[33];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
        fprintf(stderr, "gatehouse: cannot read random bytes: %s\n", strerror(errno));
        return 1;
    }
    char key[64] = "ghk_";
    size_t n = 4;
    for (size_t i = 0; i < sizeof raw; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        key[n++] = b64url[(v >> 18) & 63];
        key[n++] = b64url[(v >> 12) & 63];
        key[n++] = b64url[(v >> 6) & 63];
        key[n++] = b64url[v & 63];
    }
    key[n] = '\0';
    char hex[65];
    sha256_hex((const unsigned char *)key, n, hex);
    printf("%s\nsha256:%s\n", key, hex);
    return 0;
}

static int cmd_hash_key(void)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return 1;
    for (;;) {
        if (len == cap) {
            if (cap >= (1u << 20)) {
                fprintf(stderr, "gatehouse: secret too long\n");
                free(buf);
                return 1;
            }
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                return 1;
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len, stdin);
        if (n == 0)
            break;
        len += n;
    }
    if (len > 0 && buf[len - 1] == '\n') {
        len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
    }
    if (len == 0) {
        fprintf(stderr, "gatehouse: hash-key: no secret on stdin\n");
        free(buf);
        return 1;
    }
    char hex[65];
    sha256_hex((const unsigned char *)buf, len, hex);
    free(buf);
    printf("sha256:%s\n", hex);
    return 0;
}

static gh_config_t *load_or_report(const char *path)
{
    gh_errors_t errs;
    gh_errors_init(&errs);
    gh_config_t *cfg = gh_config_load(path, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.lines[i]);
    gh_errors_free(&errs);
    return cfg;
}

static int cmd_signal(const char *path, const char *what)
{
    int sig;
    if (strcmp(what, "reload") == 0)
        sig = SIGHUP;
    else if (strcmp(what, "stop") == 0)
        sig = SIGTERM;
    else {
        fprintf(stderr, "gatehouse: -s takes reload or stop, not '%s'\n%s", what, usage_text);
        return 2;
    }
    gh_config_t *cfg = load_or_report(path);
    if (!cfg)
        return 1;
    if (!cfg->pid_file) {
        fprintf(stderr, "gatehouse: %s: no pid_file is set, so the running instance cannot be found\n", path);
        gh_config_release(cfg);
        return 1;
    }
    FILE *f = fopen(cfg->pid_file, "r");
    long pid = 0;
    if (!f || fscanf(f, "%ld", &pid) != 1 || pid <= 1) {
        fprintf(stderr, "gatehouse: cannot read a pid from %s%s%s\n", cfg->pid_file,
                f ? "" : ": ", f ? "" : strerror(errno));
        if (f)
            fclose(f);
        gh_config_release(cfg);
        return 1;
    }
    fclose(f);
    if (kill((pid_t)pid, sig) != 0) {
        fprintf(stderr, "gatehouse: cannot signal pid %ld (from %s): %s\n", pid, cfg->pid_file,
                strerror(errno));
        gh_config_release(cfg);
        return 1;
    }
    gh_config_release(cfg);
    return 0;
}

int main(int argc, char **argv)
{
    const char *config = GH_DEFAULT_CONFIG;
    const char *signal_what = NULL;
    bool test_only = false;

    if (argc >= 2 && strcmp(argv[1], "keygen") == 0) {
        if (argc != 2) {
            fputs(usage_text, stderr);
            return 2;
        }
        return cmd_keygen();
    }
    if (argc >= 2 && strcmp(argv[1], "hash-key") == 0) {
        if (argc != 2) {
            fputs(usage_text, stderr);
            return 2;
        }
        return cmd_hash_key();
    }

    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "config", required_argument, NULL, 'c' },
        { "test", no_argument, NULL, 't' },
        { "signal", required_argument, NULL, 's' },
        { NULL, 0, NULL, 0 },
    };
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "c:ts:hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': config = optarg; break;
        case 't': test_only = true; break;
        case 's': signal_what = optarg; break;
        case 'h': fputs(usage_text, stdout); return 0;
        case 'V': printf("gatehouse %s\n", GH_VERSION); return 0;
        default:
            if (optopt)
                fprintf(stderr, "gatehouse: bad option '-%c'\n", optopt);
            else
                fprintf(stderr, "gatehouse: bad option '%s'\n", argv[optind - 1]);
            fputs(usage_text, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "gatehouse: unexpected argument '%s'\n%s", argv[optind], usage_text);
        return 2;
    }
    if (signal_what) {
        if (test_only) {
            fputs(usage_text, stderr);
            return 2;
        }
        return cmd_signal(config, signal_what);
    }
    gh_config_t *cfg = load_or_report(config);
    if (!cfg)
        return 1;
    if (test_only) {
        /* "Deep" includes loading every certificate and key. */
        if (cfg->tls.ncerts) {
            gh_errors_t errs;
            gh_errors_init(&errs);
            gh_tls_server_t *t = gh_tls_server_new(cfg, &errs);
            for (size_t i = 0; i < errs.n; i++)
                fprintf(stderr, "%s\n", errs.lines[i]);
            gh_errors_free(&errs);
            if (!t) {
                gh_config_release(cfg);
                return 1;
            }
            gh_tls_server_free(t);
        }
        printf("%s: configuration OK\n", config);
        gh_config_release(cfg);
        return 0;
    }
    return gh_server_run(config, cfg);
}
