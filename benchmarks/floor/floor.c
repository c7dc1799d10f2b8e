/*
 * The floor: what one short TCP connection costs with nothing but the kernel's work and a minimal
 * event loop. Single-threaded epoll, nonblocking sockets, no allocation per connection.
 *
 *   floor http PORT        HTTP/1.1 churn: reads a request head, answers 13 bytes with
 *                          "Connection: close", sends its FIN, reads to the client's FIN, closes
 *   floor transport PORT   TransportBench's protocol: reads 1 byte, writes 1 byte, FIN, reads to EOF, closes
 *
 * Listens on 127.0.0.1:PORT only. Prints "listening" once bound; runs until SIGTERM or SIGINT.
 * Built by build/bench.sh with gcc -O2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 65536

enum state { READING, DRAINING };

struct conn {
    unsigned char state;
    unsigned short head; /* bytes of the request head matched so far ("\r\n\r\n") */
};

static struct conn conns[MAX_FDS];
static volatile sig_atomic_t stop;

static const char http_response[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nHello, World!";

static void on_signal(int sig) { (void)sig; stop = 1; }

static void finish(int fd) { close(fd); }

/* Reads what is there. Returns 1 when the request is complete (HTTP head or 1 byte), -1 at EOF/error, 0 otherwise. */
static int read_request(int fd, int http) {
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0) return -1;
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        if (!http) return 1;
        static const char end[] = "\r\n\r\n";
        for (ssize_t i = 0; i < n; i++) {
            conns[fd].head = (buf[i] == end[conns[fd].head]) ? conns[fd].head + 1 : (buf[i] == '\r' ? 1 : 0);
            if (conns[fd].head == 4) return 1;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "http") && strcmp(argv[1], "transport"))) {
        fprintf(stderr, "usage: floor http|transport PORT\n");
        return 2;
    }
    int http = strcmp(argv[1], "http") == 0;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2])),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 4096)) {
        perror("floor: bind/listen");
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
                    conns[c].state = READING;
                    conns[c].head = 0;
                    struct epoll_event cev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            if (conns[fd].state == READING) {
                int r = read_request(fd, http);
                if (r < 0) { finish(fd); continue; }
                if (r == 0) continue;
                /* Tiny responses on loopback: one write takes them whole. */
                if (http) (void)!write(fd, http_response, sizeof http_response - 1);
                else (void)!write(fd, "y", 1);
                shutdown(fd, SHUT_WR);
                conns[fd].state = DRAINING;
                continue;
            }
            /* DRAINING: read to the client's FIN (or an error), then close. */
            char buf[512];
            ssize_t r;
            while ((r = read(fd, buf, sizeof buf)) > 0) { }
            if (r == 0 || (errno != EAGAIN && errno != EINTR)) finish(fd);
        }
    }
    return 0;
}
