/* The least a watcher that starts one process per new file can do, for
 * bench/job_latency.py: inotify IN_CREATE on DIR; for each event posix_spawn
 * JOB SOCK DIR/NAME (glibc's posix_spawn is clone(CLONE_VM|CLONE_VFORK) + exec);
 * jobs run side by side and are reaped on SIGCHLD (signalfd + poll). No output
 * capture, no logging, no record of any kind.
 * Usage: spawn_floor DIR JOB SOCK */
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    const char *dir = argv[1], *job = argv[2], *sock = argv[3];
    sigset_t chld, none;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigemptyset(&none);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int in = inotify_init1(IN_CLOEXEC);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (in < 0 || sfd < 0 || inotify_add_watch(in, dir, IN_CREATE) < 0) return perror("setup"), 1;
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    char buf[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
    struct pollfd fds[2] = {{in, POLLIN, 0}, {sfd, POLLIN, 0}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) continue;
        if (fds[0].revents) {
            ssize_t n = read(in, buf, sizeof buf);
            for (char *p = buf; n > 0 && p < buf + n;) {
                struct inotify_event *e = (struct inotify_event *)p;
                char path[8192];
                snprintf(path, sizeof path, "%s/%s", dir, e->name);
                char *args[] = {(char *)job, (char *)sock, path, NULL};
                pid_t pid;
                posix_spawn(&pid, job, NULL, &attr, args, environ);
                p += sizeof *e + e->len;
            }
        }
        if (fds[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {}
            while (waitpid(-1, NULL, WNOHANG) > 0) {}
        }
    }
}
