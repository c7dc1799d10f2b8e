/*
 * The HTTPS floor: what one short TLS connection costs with the kernel, OpenSSL and a minimal event
 * loop, nothing else. Single-threaded epoll, nonblocking sockets, one SSL_CTX for every connection (so
 * TLS 1.2 sessions and TLS 1.3 tickets resume, OpenSSL's defaults: stateless tickets, two per
 * handshake), OpenSSL's default groups and cipher suites, TLS 1.2 and 1.3 only.
 *
 *   tls_floor PORT CERT.pem KEY.pem   HTTP/1.1 churn over TLS: SSL_accept, reads a request head, answers
 *                                     13 bytes with "Connection: close", sends its FIN (no close_notify, as Kestrel),
 *                                     reads to the client's FIN, closes
 *
 * Listens on 127.0.0.1:PORT only. Prints "listening" once bound; runs until SIGTERM or SIGINT, then
 * prints "handshakes=N resumed=M". Built by build/bench.sh with gcc -O2 -lssl -lcrypto.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 65536

enum state { HANDSHAKE, READING, DRAINING };

struct conn {
    SSL *ssl;
    unsigned char state;
    unsigned short head; /* bytes of the request head matched so far ("\r\n\r\n") */
};

static struct conn conns[MAX_FDS];
static volatile sig_atomic_t stop;
static unsigned long handshakes, resumed;

static const char http_response[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nHello, World!";

static void on_signal(int sig) { (void)sig; stop = 1; }

static void finish(int fd) {
    if (conns[fd].ssl) {
        /* Ended as Kestrel ends it (no close_notify), yet not "bad": the session stays resumable. */
        SSL_set_shutdown(conns[fd].ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(conns[fd].ssl);
        conns[fd].ssl = NULL;
    }
    close(fd);
}

/* Wants the next event the TLS engine waits for: reading or writing. */
static void want(int ep, int fd, int err) {
    struct epoll_event ev = { .events = (err == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN) | EPOLLRDHUP, .data.fd = fd };
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

/* Reads what is there. Returns 1 when the request head is complete, -1 at EOF/error, 0 to wait (err set). */
static int read_request(int fd, int *err) {
    char buf[4096];
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(conns[fd].ssl, buf, sizeof buf);
        if (n <= 0) {
            *err = SSL_get_error(conns[fd].ssl, n);
            return (*err == SSL_ERROR_WANT_READ || *err == SSL_ERROR_WANT_WRITE) ? 0 : -1;
        }
        static const char end[] = "\r\n\r\n";
        for (int i = 0; i < n; i++) {
            conns[fd].head = (buf[i] == end[conns[fd].head]) ? conns[fd].head + 1 : (buf[i] == '\r' ? 1 : 0);
            if (conns[fd].head == 4) return 1;
        }
    }
}

/* Runs a connection as far as it goes now. */
static void step(int ep, int fd) {
    struct conn *c = &conns[fd];
    int err = 0;
    if (c->state == HANDSHAKE) {
        ERR_clear_error();
        int r = SSL_accept(c->ssl);
        if (r <= 0) {
            err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) want(ep, fd, err);
            else finish(fd);
            return;
        }
        handshakes++;
        if (SSL_session_reused(c->ssl)) resumed++;
        c->state = READING;
    }
    if (c->state == READING) {
        int r = read_request(fd, &err);
        if (r < 0) { finish(fd); return; }
        if (r == 0) { want(ep, fd, err); return; }
        /* A tiny response on loopback: one record, one write takes it whole. */
        ERR_clear_error();
        if (SSL_write(c->ssl, http_response, sizeof http_response - 1) <= 0) { finish(fd); return; }
        /* The FIN, without a close_notify (as Kestrel's SslStream ends a Connection: close response); the
           client's FIN is read below. */
        shutdown(fd, SHUT_WR);
        c->state = DRAINING;
        want(ep, fd, SSL_ERROR_WANT_READ);
        return;
    }
    /* DRAINING: read to the client's FIN (or an error), then close. */
    char buf[512];
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) > 0) { }
    if (r == 0 || (errno != EAGAIN && errno != EINTR)) finish(fd);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: tls_floor PORT CERT.pem KEY.pem\n");
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
        || SSL_CTX_use_certificate_chain_file(ctx, argv[2]) != 1
        || SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1
        || SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "tls_floor: the certificate or key could not be loaded\n");
        ERR_print_errors_fp(stderr);
        return 1;
    }
    /* The session id context lets TLS 1.2 session-id resumption work across connections of this CTX. */
    static const unsigned char sid_ctx[] = "tls_floor";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1])),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 4096)) {
        perror("tls_floor: bind/listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = lfd };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    printf("listening\n");
    fflush(stdout);

    struct epoll_event events[256];
    while (!stop) {
        int n = epoll_wait(ep, events, 256, 500);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (c >= MAX_FDS) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    SSL *ssl = SSL_new(ctx);
                    if (!ssl || SSL_set_fd(ssl, c) != 1) { if (ssl) SSL_free(ssl); close(c); continue; }
                    conns[c].ssl = ssl;
                    conns[c].state = HANDSHAKE;
                    conns[c].head = 0;
                    struct epoll_event cev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                    /* The ClientHello is usually there already (the client wrote it with its connect). */
                    step(ep, c);
                }
                continue;
            }
            step(ep, fd);
        }
    }
    printf("handshakes=%lu resumed=%lu\n", handshakes, resumed);
    fflush(stdout);
    SSL_CTX_free(ctx);
    return 0;
}
