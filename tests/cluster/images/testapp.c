/* The test application of the local node: a static binary that serves HTTP and can be told to
 * fail. Installed as /app/web and /app/migrate (the same program).
 *
 *   /app/web [--port=N] [--exit=N]   serves "ok" (200) on every path of 0.0.0.0:N (default
 *                                    8080): readiness and liveness probes; --exit=N exits
 *                                    with N at once instead (a container that fails)
 *   /app/migrate [--wait] [--exit=N] a hook or init step: exits 0 (or N) at once
 *
 * The environment variable TESTAPP_EXIT=N does what --exit=N does (for charts whose args are
 * fixed). */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void quit(int s) { (void)s; _exit(0); }

int main(int argc, char **argv) {
  int port = 8080, code = -1;
  const char *name = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
  const char *env = getenv("TESTAPP_EXIT");
  if (env && *env) code = atoi(env);
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--port=", 7) == 0) port = atoi(argv[i] + 7);
    else if (strncmp(argv[i], "--exit=", 7) == 0) code = atoi(argv[i] + 7);
  }
  if (code >= 0) { fprintf(stderr, "%s: exiting with %d as told\n", name, code); return code; }
  if (strcmp(name, "migrate") == 0) { fprintf(stderr, "migrate: nothing to do\n"); return 0; }
  signal(SIGTERM, quit); signal(SIGINT, quit); signal(SIGPIPE, SIG_IGN);
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0) { perror("listen"); return 1; }
  fprintf(stderr, "%s: serving on :%d\n", name, port);
  static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
  for (;;) {
    int c = accept(s, 0, 0);
    if (c < 0) continue;
    char buf[2048];
    (void)read(c, buf, sizeof buf);   /* the request: any path is fine */
    (void)write(c, reply, sizeof reply - 1);
    close(c);
  }
}
