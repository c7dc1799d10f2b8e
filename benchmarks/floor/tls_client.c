/*
 * The HTTPS churn client of build/bench.sh: THREADS blocking loops, each connecting to 127.0.0.1:PORT,
 * handshaking (TLS 1.2 or 1.3, as asked), sending one "Connection: close" GET and reading the response
 * to the server's close, for SECONDS. wrk cannot offer a session, so this client does both kinds of run:
 *
 *   tls_client full|resume 1.2|1.3 PORT THREADS SECONDS
 *
 * full: every connection a full handshake (no session offered). resume: each loop offers the session
 * (TLS 1.2) or ticket (TLS 1.3) its last connection got, so every connection after a loop's first
 * resumes when the server allows it. Prints one line: "tls_client requests=N resumed=M errors=E rps=R".
 * Built by build/bench.sh with gcc -O2 -pthread -lssl -lcrypto.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static SSL_CTX *ctx;
static int port, resume;
static atomic_long requests, resumed, errors;
static atomic_int stop;

static const char request[] = "GET /plaintext HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/* One connection; returns the session to offer next (or NULL), and frees the one it was given. */
static SSL_SESSION *one(SSL_SESSION *offer) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    SSL *ssl = NULL;
    SSL_SESSION *next = NULL;
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0 && (ssl = SSL_new(ctx)) && SSL_set_fd(ssl, fd) == 1) {
        SSL_set_tlsext_host_name(ssl, "localhost");
        if (offer) SSL_set_session(ssl, offer);
        if (SSL_connect(ssl) == 1 && SSL_write(ssl, request, sizeof request - 1) == (int)(sizeof request - 1)) {
            char buf[4096], head[12];
            long got = 0;
            int n;
            /* To the server's close_notify or FIN: the TLS 1.3 tickets come in on the way. */
            while ((n = SSL_read(ssl, buf, sizeof buf)) > 0) {
                for (int i = 0; i < n && got + i < (long)sizeof head; i++) head[got + i] = buf[i];
                got += n;
            }
            ok = got >= (long)sizeof head && memcmp(head, "HTTP/1.1 200", sizeof head) == 0;
            if (ok && SSL_session_reused(ssl)) atomic_fetch_add(&resumed, 1);
            if (ok && resume) {
                SSL_SESSION *s = SSL_get1_session(ssl);
                if (s && SSL_SESSION_is_resumable(s)) next = s;
                else if (s) SSL_SESSION_free(s);
            }
        }
    }
    if (ssl) {
        /* Ended as wrk ends it (no close_notify of its own), yet not "bad": SSL_free would otherwise mark the
           session, which the next connection offers, not resumable. */
        SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(ssl);
    }
    close(fd);
    if (offer) SSL_SESSION_free(offer);
    if (ok) atomic_fetch_add(&requests, 1);
    else atomic_fetch_add(&errors, 1);
    return next;
}

static void *loop(void *arg) {
    (void)arg;
    SSL_SESSION *session = NULL;
    while (!atomic_load(&stop)) session = one(session);
    if (session) SSL_SESSION_free(session);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6 || (strcmp(argv[1], "full") && strcmp(argv[1], "resume")) || (strcmp(argv[2], "1.2") && strcmp(argv[2], "1.3"))) {
        fprintf(stderr, "usage: tls_client full|resume 1.2|1.3 PORT THREADS SECONDS\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    resume = strcmp(argv[1], "resume") == 0;
    int version = strcmp(argv[2], "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
    port = atoi(argv[3]);
    int threads = atoi(argv[4]), seconds = atoi(argv[5]);
    if (threads < 1 || threads > 256 || seconds < 1 || seconds > 600) {
        fprintf(stderr, "tls_client: THREADS 1-256, SECONDS 1-600\n");
        return 2;
    }
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, version);
    SSL_CTX_set_max_proto_version(ctx, version);
    /* The bench's certificate is its own, made for the run: no verification. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    /* A server that closes without close_notify (Kestrel does, after a Connection: close response) ends
       the read as HTTP clients take it, a clean end: OpenSSL 3 would otherwise call it an error and mark
       the session it came with not resumable. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Sessions are kept by the loops themselves, not in the context's cache. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);

    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < threads; i++) pthread_create(&ids[i], NULL, loop, NULL);
    sleep((unsigned)seconds);
    atomic_store(&stop, 1);
    for (int i = 0; i < threads; i++) pthread_join(ids[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double elapsed = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    printf("tls_client requests=%ld resumed=%ld errors=%ld rps=%.1f\n", atomic_load(&requests), atomic_load(&resumed),
           atomic_load(&errors), (double)atomic_load(&requests) / elapsed);
    free(ids);
    SSL_CTX_free(ctx);
    return 0;
}
