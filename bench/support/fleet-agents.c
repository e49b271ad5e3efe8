/*
 * The fleet benchmark's native load generator (`bench/fleet.ts --client native`, push mode).
 *
 * Why it exists: with ten thousand simulated agents in one Node.js load generator on one core, that
 * process's own garbage collections and answer batches (its event loop's p99 is 20-30 ms at 10,000
 * agents) are added to every latency it measures, and real agents are separate hosts. This program
 * does the same work as bench/support/fleet-worker.ts (one kept-alive mutual-TLS connection per agent,
 * its held long-poll as its sync, the bundle fetched when an answer names another bundle ETag) in one
 * epoll loop with OpenSSL, so the client's share of a measured latency is the time it takes to read a
 * socket, not a heap's pauses.
 *
 * Written for Sigil's benchmark (no code taken from elsewhere). Build (bench/fleet.ts does it):
 *   cc -O2 -Wall -Wextra -o fleet-agents fleet-agents.c -lssl -lcrypto
 *
 * Usage: fleet-agents <agents-file>
 *   The agents file, one item per line:
 *     ca <PEM file of the CAs the verifier's certificate must chain to>
 *     server <URI SAN the verifier's certificate must carry>
 *     wait <seconds each long-poll asks to be held>
 *     concurrency <first syncs in flight at once>
 *     agent <index> <port> <source IPv4 address> <PEM file: certificate chain, then PKCS#8 key>
 *   Commands on standard input, one per line:
 *     start                       first sync (full set and bundle) of every agent, then its long-poll
 *     measure 1 | measure 0       open / close a measuring window (0 prints the window's figures)
 *     op <id> <0|1> <t0> <i,...>  an entry change made at t0 (CLOCK_MONOTONIC ms): report each listed
 *                                 agent once it holds a set with (1) or without (0) the entry
 *     stop                        close every connection and exit
 *   Lines on standard output (the window's loopP99/loopMax: how long each answer read in the window
 *   waited in its loop pass, from epoll_wait's return to its reading):
 *     started <bytes of the first sets>
 *     seen <id> <0|1> <agent index> <CLOCK_MONOTONIC ms>   (0|1: the op's, a delete or a create)
 *     window <JSON object, the fields of WindowStats in fleet-worker.ts>
 *     stopped
 *     failed <message>            (then exit status 1)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define MAX_HEAD (64 * 1024)
#define MAX_BODY (64 * 1024 * 1024)
#define MAX_ETAG 256
#define MAX_ID 128

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void die(const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  for (char *p = msg; *p; p++)
    if (*p == '\n') *p = ' ';
  printf("failed %s\n", msg);
  fflush(stdout);
  exit(1);
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) die("out of memory (%zu bytes)", n);
  return q;
}

/* ---------- growable arrays of doubles (latencies) ---------- */

typedef struct {
  double *v;
  size_t n, cap;
} dvec;

static void dpush(dvec *d, double x) {
  if (d->n == d->cap) {
    d->cap = d->cap ? d->cap * 2 : 1024;
    d->v = xrealloc(d->v, d->cap * sizeof(double));
  }
  d->v[d->n++] = x;
}

static int dcmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* ---------- error kinds, counted by message ---------- */

typedef struct {
  char msg[160];
  long n;
} errkind;

static errkind errs[64];
static int nerrs;
static long errs_dropped;

static void count_error(const char *msg) {
  for (int k = 0; k < nerrs; k++)
    if (strcmp(errs[k].msg, msg) == 0) {
      errs[k].n++;
      return;
    }
  if (nerrs == (int)(sizeof errs / sizeof errs[0])) {
    errs_dropped++;
    return;
  }
  snprintf(errs[nerrs].msg, sizeof errs[nerrs].msg, "%s", msg);
  errs[nerrs++].n = 1;
}

/* ---------- agents ---------- */

enum req_kind { REQ_FIRST_SYNC, REQ_FIRST_BUNDLE, REQ_LONG_POLL, REQ_BUNDLE };
enum conn_state { C_NONE, C_CONNECTING, C_HANDSHAKE, C_OPEN };

typedef struct pending_op {
  char id[MAX_ID];
  int create;
  struct pending_op *next;
} pending_op;

typedef struct {
  int i, port;
  struct sockaddr_in local;
  X509 *cert;
  STACK_OF(X509) *chain;
  EVP_PKEY *key;
  /* connection */
  int fd;
  SSL *ssl;
  enum conn_state cs;
  int want_write; /* the TLS layer waits for the socket to be writable */
  /* the request in flight (one at a time) */
  int busy;
  enum req_kind kind;
  int wait;
  char req[1024];
  int req_len, req_off;
  double sent_at;
  int reused;   /* sent on a connection that had carried an answer already */
  int answered; /* a byte of its answer has come */
  int retried;  /* sent again once after the server closed a kept-alive connection */
  /* the answer being read */
  char *buf;
  size_t len, cap;
  /* state of the simulated agent */
  char etag[MAX_ETAG], bundle_etag[MAX_ETAG];
  char *last_body;
  size_t last_len;
  double last_at; /* < 0: no set held yet */
  pending_op *ops;
  double wake_at; /* > 0: sleeping after an error until then */
  long connects, reconnects;
  int started; /* first sync and bundle done */
} agent;

static agent *agents;
static int nagents;
static SSL_CTX *ctx;
static char server_id[512];
static int wait_s = 20;
static int concurrency = 16;
static int epfd;
static int running = 0, stopping = 0, measuring = 0;
static int sleepers = 0; /* agents waiting out the pause after an error */
static int next_first = 0, first_in_flight = 0, first_done = 0;
static long long first_bytes = 0;

/* the measuring window */
static long w_syncs, w_pushed, w_bundles, w_requests, w_connects0;
static dvec w_late, w_iter;
/* When the loop pass under way began (epoll_wait returned). */
static double pass_start;

static const char *ssl_error_text(void) {
  static char text[256];
  unsigned long e = ERR_get_error();
  if (!e) return "no OpenSSL error queued";
  ERR_error_string_n(e, text, sizeof text);
  ERR_clear_error();
  return text;
}

static void load_agent_pem(agent *a, const char *path) {
  BIO *b = BIO_new_file(path, "r");
  if (!b) die("agent %d: cannot open %s", a->i, path);
  a->chain = sk_X509_new_null();
  X509 *x;
  while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
    if (!a->cert) a->cert = x;
    else sk_X509_push(a->chain, x);
  }
  ERR_clear_error();
  if (!a->cert) die("agent %d: no certificate in %s", a->i, path);
  if (BIO_reset(b) != 0) die("agent %d: cannot re-read %s", a->i, path);
  a->key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
  if (!a->key) die("agent %d: no private key in %s (%s)", a->i, path, ssl_error_text());
  BIO_free(b);
}

static void read_agents_file(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) die("cannot open the agents file %s: %s", path, strerror(errno));
  char line[4096], ca[2048] = "";
  int cap = 0;
  while (fgets(line, sizeof line, f)) {
    size_t l = strlen(line);
    if (l && line[l - 1] == '\n') line[--l] = 0;
    else if (!feof(f)) die("a line of the agents file is over %zu bytes", sizeof line - 2);
    if (l == 0) continue;
    if (strncmp(line, "ca ", 3) == 0) {
      if (l - 3 >= sizeof ca) die("ca path too long");
      memcpy(ca, line + 3, l - 2);
    } else if (strncmp(line, "server ", 7) == 0) {
      if (l - 7 >= sizeof server_id) die("server ID too long");
      memcpy(server_id, line + 7, l - 6);
    }
    else if (sscanf(line, "wait %d", &wait_s) == 1) {
      if (wait_s < 1 || wait_s > 300) die("wait %d out of 1..300", wait_s);
    } else if (sscanf(line, "concurrency %d", &concurrency) == 1) {
      if (concurrency < 1 || concurrency > 1024) die("concurrency %d out of 1..1024", concurrency);
    } else if (strncmp(line, "agent ", 6) == 0) {
      int i, port;
      char addr[64], pem[2048];
      if (sscanf(line, "agent %d %d %63s %2047s", &i, &port, addr, pem) != 4) die("bad agent line: %.200s", line);
      if (port < 1 || port > 65535) die("agent %d: port %d out of range", i, port);
      if (nagents == cap) {
        cap = cap ? cap * 2 : 1024;
        agents = xrealloc(agents, (size_t)cap * sizeof(agent));
      }
      agent *a = &agents[nagents++];
      memset(a, 0, sizeof *a);
      a->i = i;
      a->port = port;
      a->fd = -1;
      a->last_at = -1;
      a->local.sin_family = AF_INET;
      if (inet_pton(AF_INET, addr, &a->local.sin_addr) != 1) die("agent %d: bad source address %s", i, addr);
      load_agent_pem(a, pem);
    } else die("unknown line in the agents file: %.200s", line);
  }
  fclose(f);
  if (!ca[0]) die("the agents file names no ca");
  if (!server_id[0]) die("the agents file names no server");
  if (nagents == 0) die("the agents file names no agent");
  ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) die("SSL_CTX_new: %s", ssl_error_text());
  if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) die("cannot load CA file %s: %s", ca, ssl_error_text());
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  /* Idle connections give their record buffers back (ten thousand held long-polls). */
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

/* The verifier's certificate must carry exactly the URI SAN named (as fleet-client.ts checks). */
static int server_identity_ok(SSL *ssl) {
  X509 *peer = SSL_get1_peer_certificate(ssl);
  if (!peer) return 0;
  int ok = 0, uris = 0;
  GENERAL_NAMES *names = X509_get_ext_d2i(peer, NID_subject_alt_name, NULL, NULL);
  for (int k = 0; names && k < sk_GENERAL_NAME_num(names); k++) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, k);
    if (g->type != GEN_URI) continue;
    uris++;
    const ASN1_IA5STRING *u = g->d.uniformResourceIdentifier;
    size_t n = (size_t)ASN1_STRING_length(u);
    if (n == strlen(server_id) && memcmp(ASN1_STRING_get0_data(u), server_id, n) == 0) ok = 1;
  }
  GENERAL_NAMES_free(names);
  X509_free(peer);
  return ok && uris == 1;
}

/* ---------- epoll helpers ---------- */

static void ep_set(agent *a, uint32_t events, int add) {
  struct epoll_event ev = {.events = events, .data.ptr = a};
  if (epoll_ctl(epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, a->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
}

static void conn_close(agent *a) {
  if (a->ssl) {
    SSL_free(a->ssl);
    a->ssl = NULL;
  }
  if (a->fd >= 0) {
    close(a->fd); /* also leaves the epoll set */
    a->fd = -1;
  }
  a->cs = C_NONE;
  a->want_write = 0;
  a->len = 0;
}

/* Opens the agent's connection; on failure a->cs stays C_NONE and errno says why. */
static void conn_open(agent *a) {
  a->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (a->fd < 0) return;
  int one = 1;
  setsockopt(a->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (bind(a->fd, (struct sockaddr *)&a->local, sizeof a->local) != 0) {
    int e = errno;
    close(a->fd);
    a->fd = -1;
    errno = e;
    return;
  }
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port)};
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a->connects++;
  a->cs = C_CONNECTING;
  if (connect(a->fd, (struct sockaddr *)&to, sizeof to) != 0 && errno != EINPROGRESS) {
    int e = errno;
    close(a->fd);
    a->fd = -1;
    a->cs = C_NONE;
    errno = e;
    return;
  }
  ep_set(a, EPOLLOUT, 1);
}

/* ---------- requests ---------- */

static void fail_request(agent *a, const char *why);
static void drive(agent *a);

static void send_request(agent *a, enum req_kind kind, int wait) {
  a->kind = kind;
  a->wait = wait;
  const char *path = "/v1/bundle";
  char target[128];
  const char *inm = "";
  if (kind == REQ_FIRST_SYNC) path = "/v1/entries/authorized";
  else if (kind == REQ_LONG_POLL) {
    snprintf(target, sizeof target, "/v1/entries/authorized?wait=%d", wait);
    path = target;
    inm = a->etag;
  } else if (kind == REQ_BUNDLE) inm = a->bundle_etag;
  int n;
  if (inm[0])
    n = snprintf(a->req, sizeof a->req, "GET %s HTTP/1.1\r\nhost: verifier\r\naccept: application/json\r\nif-none-match: %s\r\n\r\n", path, inm);
  else n = snprintf(a->req, sizeof a->req, "GET %s HTTP/1.1\r\nhost: verifier\r\naccept: application/json\r\n\r\n", path);
  if (n < 0 || n >= (int)sizeof a->req) die("agent %d: request too long", a->i);
  a->req_len = n;
  a->req_off = 0;
  a->busy = 1;
  a->answered = 0;
  a->retried = 0;
  a->len = 0;
  a->reused = a->cs == C_OPEN;
  a->sent_at = now_ms();
  if (a->cs == C_NONE) {
    conn_open(a);
    if (a->cs == C_NONE) {
      char why[160];
      snprintf(why, sizeof why, "connect: %s", strerror(errno));
      fail_request(a, why);
      return;
    }
  }
  drive(a);
}

static void long_poll(agent *a, int wait) { send_request(a, REQ_LONG_POLL, wait); }

/* A failed request: first syncs end the run; a held loop counts it and tries again in 1 s. */
static void fail_request(agent *a, const char *why) {
  conn_close(a);
  a->busy = 0;
  if (!a->started) die("agent %d: first sync: %s", a->i, why);
  if (stopping) return;
  count_error(why);
  if (a->wake_at == 0) sleepers++;
  a->wake_at = now_ms() + 1000;
}

static void start_next_first(void);

static int body_has(const char *body, size_t len, const char *id) {
  char pat[MAX_ID + 16];
  int n = snprintf(pat, sizeof pat, "\"id\":\"%s\"", id);
  return memmem(body, len, pat, (size_t)n) != NULL;
}

/* An agent received a set: the changes it was waiting for that this set shows are reported. */
static void seen(agent *a, const char *body, size_t len) {
  double at = now_ms();
  a->last_body = xrealloc(a->last_body, len);
  memcpy(a->last_body, body, len);
  a->last_len = len;
  a->last_at = at;
  pending_op **pp = &a->ops;
  while (*pp) {
    pending_op *o = *pp;
    if (body_has(body, len, o->id) == o->create) {
      printf("seen %s %d %d %.3f\n", o->id, o->create, a->i, at);
      *pp = o->next;
      free(o);
    } else pp = &o->next;
  }
}

static int header_value(const char *head, size_t hlen, const char *name, char *out, size_t outlen) {
  size_t nl = strlen(name);
  const char *p = head, *end = head + hlen;
  p = memchr(p, '\n', (size_t)(end - p)); /* skip the status line */
  while (p && ++p < end) {
    const char *e = memchr(p, '\n', (size_t)(end - p));
    const char *le = e ? e : end;
    if (le > p && le[-1] == '\r') le--;
    if ((size_t)(le - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
      const char *v = p + nl + 1;
      while (v < le && (*v == ' ' || *v == '\t')) v++;
      const char *ve = le;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      size_t n = (size_t)(ve - v);
      if (n >= outlen) return -1;
      memcpy(out, v, n);
      out[n] = 0;
      return 1;
    }
    p = e;
  }
  return 0;
}

/* A whole answer is in a->buf: act on it as the agent would. Returns the bytes it took. */
static size_t on_answer(agent *a, size_t head_len, size_t body_len, int status, int close_after) {
  const char *head = a->buf, *body = a->buf + head_len;
  char etag[MAX_ETAG] = "", bundle[MAX_ETAG] = "";
  int has_etag = header_value(head, head_len, "etag", etag, sizeof etag) == 1;
  int has_bundle = header_value(head, head_len, "sigil-bundle-etag", bundle, sizeof bundle) == 1;
  double t_now = now_ms();
  double held = t_now - a->sent_at;
  /* How long this answer waited in the loop pass before it was read (other answers read first). */
  if (measuring) dpush(&w_iter, t_now - pass_start);
  a->busy = 0;
  enum req_kind kind = a->kind;
  int wait = a->wait;
  if (close_after) conn_close(a);
  char why[160];
  switch (kind) {
  case REQ_FIRST_SYNC:
    if (status != 200 || !has_etag) die("agent %d: first sync answered %d", a->i, status);
    snprintf(a->etag, sizeof a->etag, "%s", etag);
    first_bytes += (long long)body_len;
    send_request(a, REQ_FIRST_BUNDLE, 0);
    break;
  case REQ_FIRST_BUNDLE:
    if (status != 200 || !has_etag) die("agent %d: first bundle answered %d", a->i, status);
    snprintf(a->bundle_etag, sizeof a->bundle_etag, "%s", etag);
    a->started = 1;
    first_in_flight--;
    first_done++;
    long_poll(a, 1 + rand() % wait_s);
    start_next_first();
    break;
  case REQ_LONG_POLL:
    if (status == 200) {
      snprintf(a->etag, sizeof a->etag, "%s", has_etag ? etag : "");
      seen(a, body, body_len);
      if (measuring) w_pushed++;
    } else if (status == 304) {
      if (measuring) dpush(&w_late, held - wait * 1000.0);
    } else {
      snprintf(why, sizeof why, "long-poll %d", status);
      fail_request(a, why);
      break;
    }
    if (measuring) {
      w_syncs++;
      w_requests++;
    }
    if (has_bundle && strcmp(bundle, a->bundle_etag) == 0) long_poll(a, wait_s);
    else send_request(a, REQ_BUNDLE, 0);
    break;
  case REQ_BUNDLE:
    if (status == 200) snprintf(a->bundle_etag, sizeof a->bundle_etag, "%s", has_etag ? etag : "");
    else if (status != 304) {
      snprintf(why, sizeof why, "bundle %d", status);
      fail_request(a, why);
      break;
    }
    if (measuring) {
      w_bundles++;
      w_requests++;
    }
    long_poll(a, wait_s);
    break;
  }
  return head_len + body_len;
}

/* Parse what has come; returns 0 while more is needed, -1 after a protocol error (request failed). */
static int parse(agent *a) {
  char *end = memmem(a->buf, a->len, "\r\n\r\n", 4);
  if (!end) {
    if (a->len > MAX_HEAD) {
      fail_request(a, "answer head over 64 KiB");
      return -1;
    }
    return 0;
  }
  size_t head_len = (size_t)(end - a->buf) + 4;
  int status = 0;
  if (a->len < 12 || strncmp(a->buf, "HTTP/1.1 ", 9) != 0 || sscanf(a->buf + 9, "%3d", &status) != 1) {
    fail_request(a, "not an HTTP/1.1 answer");
    return -1;
  }
  char v[64];
  if (header_value(a->buf, head_len, "transfer-encoding", v, sizeof v) != 0) {
    fail_request(a, "chunked answers are not expected");
    return -1;
  }
  size_t body_len = 0;
  if (header_value(a->buf, head_len, "content-length", v, sizeof v) == 1) {
    char *e;
    unsigned long long n = strtoull(v, &e, 10);
    if (*e || e == v || n > MAX_BODY) {
      fail_request(a, "bad content-length");
      return -1;
    }
    body_len = (size_t)n;
  }
  if (a->len < head_len + body_len) return 0;
  int close_after = header_value(a->buf, head_len, "connection", v, sizeof v) == 1 && strcasecmp(v, "close") == 0;
  if (a->len > head_len + body_len) {
    fail_request(a, "bytes after the answer");
    return -1;
  }
  on_answer(a, head_len, body_len, status, close_after);
  return 1;
}

/* The connection ended (the server closed it, or an error). */
static void conn_lost(agent *a, const char *why) {
  if (!a->busy) {
    /* No request in flight: an agent always has one once started, so this is a connection closed
       between two requests. Counted, and the agent goes on after the pause, as after any error. */
    fail_request(a, "connection closed with no request in flight");
    return;
  }
  if (a->reused && !a->answered && !a->retried && !stopping) {
    /* As HTTP clients do for an idempotent request: sent once more on a new connection. */
    conn_close(a);
    a->reconnects++;
    a->retried = 1;
    a->req_off = 0;
    a->reused = 0;
    conn_open(a);
    if (a->cs == C_NONE) {
      fail_request(a, "connect failed");
      return;
    }
    return;
  }
  fail_request(a, why);
}

/* Advance the connection as far as it goes without blocking. */
static void drive(agent *a) {
  if (a->cs == C_CONNECTING) return; /* EPOLLOUT says when */
  ERR_clear_error();
  if (a->cs == C_HANDSHAKE) {
    int r = SSL_do_handshake(a->ssl);
    if (r != 1) {
      int e = SSL_get_error(a->ssl, r);
      if (e == SSL_ERROR_WANT_READ) {
        ep_set(a, EPOLLIN, 0);
        return;
      }
      if (e == SSL_ERROR_WANT_WRITE) {
        ep_set(a, EPOLLOUT, 0);
        return;
      }
      char why[300];
      snprintf(why, sizeof why, "TLS handshake: %s", ssl_error_text());
      conn_lost(a, why);
      return;
    }
    if (SSL_get_verify_result(a->ssl) != X509_V_OK || !server_identity_ok(a->ssl)) {
      conn_close(a);
      if (a->busy) fail_request(a, "the verifier's certificate is not the one expected");
      return;
    }
    a->cs = C_OPEN;
    ep_set(a, EPOLLIN, 0);
  }
  if (a->cs != C_OPEN) return;
  while (a->busy && a->req_off < a->req_len) {
    int r = SSL_write(a->ssl, a->req + a->req_off, a->req_len - a->req_off);
    if (r > 0) {
      a->req_off += r;
      continue;
    }
    int e = SSL_get_error(a->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE) {
      a->want_write = 1;
      ep_set(a, EPOLLIN | EPOLLOUT, 0);
      return;
    }
    if (e == SSL_ERROR_WANT_READ) return;
    ERR_clear_error();
    conn_lost(a, "connection closed");
    return;
  }
  if (a->want_write) {
    a->want_write = 0;
    ep_set(a, EPOLLIN, 0);
  }
  for (;;) {
    if (a->cap - a->len < 16384) {
      a->cap = a->cap ? a->cap * 2 : 32768;
      a->buf = xrealloc(a->buf, a->cap);
    }
    int r = SSL_read(a->ssl, a->buf + a->len, (int)(a->cap - a->len));
    if (r > 0) {
      if (!a->busy) { /* bytes nobody asked for */
        fail_request(a, "bytes from the verifier with no request in flight");
        return;
      }
      a->answered = 1;
      a->len += (size_t)r;
      int p = parse(a);
      if (p != 0) return; /* failed, or answered (on_answer sent the next request and drove it) */
      continue;
    }
    int e = SSL_get_error(a->ssl, r);
    if (e == SSL_ERROR_WANT_READ) return;
    if (e == SSL_ERROR_WANT_WRITE) {
      a->want_write = 1;
      ep_set(a, EPOLLIN | EPOLLOUT, 0);
      return;
    }
    ERR_clear_error();
    conn_lost(a, "connection closed");
    return;
  }
}

static void on_event(agent *a, uint32_t ev) {
  if (a->cs == C_CONNECTING) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(a->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      char why[160];
      snprintf(why, sizeof why, "connect: %s", strerror(err));
      conn_close(a);
      if (a->busy) fail_request(a, why);
      return;
    }
    a->ssl = SSL_new(ctx);
    if (!a->ssl) die("SSL_new: %s", ssl_error_text());
    SSL_set_fd(a->ssl, a->fd);
    SSL_set_connect_state(a->ssl);
    if (SSL_use_certificate(a->ssl, a->cert) != 1 || SSL_use_PrivateKey(a->ssl, a->key) != 1) die("agent %d: certificate or key refused: %s", a->i, ssl_error_text());
    for (int k = 0; k < sk_X509_num(a->chain); k++)
      if (SSL_add1_chain_cert(a->ssl, sk_X509_value(a->chain, k)) != 1) die("agent %d: chain: %s", a->i, ssl_error_text());
    a->cs = C_HANDSHAKE;
  }
  (void)ev;
  drive(a);
}

static void start_next_first(void) {
  while (first_in_flight < concurrency && next_first < nagents) {
    agent *a = &agents[next_first++];
    first_in_flight++;
    send_request(a, REQ_FIRST_SYNC, 0);
  }
  if (first_done == nagents && running == 1) {
    running = 2;
    printf("started %lld\n", first_bytes);
    fflush(stdout);
  }
}

/* ---------- commands ---------- */

static agent *by_index(int i) {
  /* Agents are listed by index in the file fleet.ts writes; fall back to a search otherwise. */
  if (i >= 0 && i < nagents && agents[i].i == i) return &agents[i];
  for (int k = 0; k < nagents; k++)
    if (agents[k].i == i) return &agents[k];
  return NULL;
}

static long connects_total(void) {
  long n = 0;
  for (int k = 0; k < nagents; k++) n += agents[k].connects;
  return n;
}

static void window_print(void) {
  double p99 = 0, mx = 0;
  if (w_iter.n) {
    qsort(w_iter.v, w_iter.n, sizeof(double), dcmp);
    size_t k = (size_t)((double)w_iter.n * 0.99);
    if (k >= w_iter.n) k = w_iter.n - 1;
    p99 = w_iter.v[k];
    mx = w_iter.v[w_iter.n - 1];
  }
  long reconnects = 0;
  for (int k = 0; k < nagents; k++) reconnects += agents[k].reconnects;
  printf("window {\"syncs\":%ld,\"pushed\":%ld,\"bundleFetches\":%ld,\"requests\":%ld,\"loopP99\":%.3f,\"loopMax\":%.3f,\"gc\":[],\"handshakes\":%ld,\"reconnects\":%ld,\"errors\":[",
         w_syncs, w_pushed, w_bundles, w_requests, p99, mx, connects_total() - w_connects0, reconnects);
  for (int k = 0; k < nerrs; k++) {
    printf("%s[\"", k ? "," : "");
    for (const char *p = errs[k].msg; *p; p++) {
      if (*p == '"' || *p == '\\') putchar('\\');
      putchar((unsigned char)*p < 0x20 ? ' ' : *p);
    }
    printf("\",%ld]", errs[k].n);
  }
  if (errs_dropped) printf("%s[\"other errors\",%ld]", nerrs ? "," : "", errs_dropped);
  printf("],\"lateness\":[");
  for (size_t k = 0; k < w_late.n; k++) printf("%s%.3f", k ? "," : "", w_late.v[k]);
  printf("]}\n");
  fflush(stdout);
}

static void command(char *line) {
  if (strcmp(line, "start") == 0) {
    if (running) die("start given twice");
    running = 1;
    start_next_first();
  } else if (strcmp(line, "measure 1") == 0) {
    w_syncs = w_pushed = w_bundles = w_requests = 0;
    w_late.n = w_iter.n = 0;
    nerrs = 0;
    errs_dropped = 0;
    w_connects0 = connects_total();
    measuring = 1;
  } else if (strcmp(line, "measure 0") == 0) {
    measuring = 0;
    window_print();
  } else if (strncmp(line, "op ", 3) == 0) {
    char id[MAX_ID];
    int create;
    double t0;
    int off = 0;
    if (sscanf(line, "op %127s %d %lf %n", id, &create, &t0, &off) != 3 || off == 0) die("bad op line: %.200s", line);
    for (char *p = line + off; *p;) {
      char *e;
      long i = strtol(p, &e, 10);
      if (e == p) die("bad agent list: %.200s", line);
      agent *a = by_index((int)i);
      if (a) {
        if (a->last_at >= t0 && body_has(a->last_body, a->last_len, id) == create) printf("seen %s %d %d %.3f\n", id, create, a->i, a->last_at);
        else {
          pending_op *o = xrealloc(NULL, sizeof *o);
          snprintf(o->id, sizeof o->id, "%s", id);
          o->create = create;
          o->next = a->ops;
          a->ops = o;
        }
      }
      p = *e == ',' ? e + 1 : e;
    }
    fflush(stdout);
  } else if (strcmp(line, "stop") == 0) {
    stopping = 1;
    for (int k = 0; k < nagents; k++) conn_close(&agents[k]);
    printf("stopped\n");
    fflush(stdout);
    exit(0);
  } else die("unknown command: %.200s", line);
}

static char inbuf[1 << 20];
static size_t inlen;

static void read_commands(void) {
  for (;;) {
    ssize_t r = read(0, inbuf + inlen, sizeof inbuf - inlen);
    if (r == 0) die("standard input closed (the benchmark went away)");
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      die("read stdin: %s", strerror(errno));
    }
    inlen += (size_t)r;
    char *nl;
    while ((nl = memchr(inbuf, '\n', inlen)) != NULL) {
      *nl = 0;
      command(inbuf);
      size_t used = (size_t)(nl - inbuf) + 1;
      memmove(inbuf, nl + 1, inlen - used);
      inlen -= used;
    }
    if (inlen == sizeof inbuf) die("a command line over 1 MiB");
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fleet-agents <agents-file>\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  srand((unsigned)getpid());
  read_agents_file(argv[1]);
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) die("epoll_create1: %s", strerror(errno));
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  static char stdin_tag;
  struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &stdin_tag};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev) != 0) die("epoll_ctl stdin: %s", strerror(errno));
  struct epoll_event evs[256];
  for (;;) {
    /* Sleepers (after an error) wake within 100 ms of their time. */
    int n = epoll_wait(epfd, evs, 256, 100);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait: %s", strerror(errno));
    }
    double t = now_ms();
    pass_start = t;
    for (int k = 0; k < n; k++) {
      if (evs[k].data.ptr == &stdin_tag) read_commands();
      else on_event((agent *)evs[k].data.ptr, evs[k].events);
    }
    if (running == 2 && sleepers > 0)
      for (int k = 0; k < nagents; k++) {
        agent *a = &agents[k];
        if (a->wake_at > 0 && a->wake_at <= t) {
          a->wake_at = 0;
          sleepers--;
          long_poll(a, wait_s);
        }
      }
    fflush(stdout);
  }
}
