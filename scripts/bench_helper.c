/* bench_helper.c — the timed inner loops of scripts/bench.py.
 *
 * Each subcommand does its own timing with CLOCK_MONOTONIC so that process start-up and the
 * Python interpreter's overhead stay out of the figures, and prints "key=value" lines.
 * Built by bench.py with `cc -O2` into the bench work dir; no dependencies beyond libc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *path) {
    fprintf(stderr, "%s %s: %s\n", what, path ? path : "", strerror(errno));
    exit(1);
}

/* list DIR REPS STAT: readdir the whole directory REPS times (the first is cold), with
 * STAT=1 also lstat (fstatat AT_SYMLINK_NOFOLLOW) each entry, like `ls -l`. */
static int cmd_list(const char *dir, int reps, int do_stat) {
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        DIR *d = opendir(dir);
        if (!d) die("opendir", dir);
        int dfd = dirfd(d);
        long n = 0;
        struct dirent *e;
        struct stat st;
        errno = 0;
        while ((e = readdir(d)) != NULL) {
            n++;
            if (do_stat && strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) die("fstatat", e->d_name);
            }
        }
        if (errno) die("readdir", dir);
        closedir(d);
        double t1 = now();
        printf("rep%d=%.9f\nentries=%ld\n", r, t1 - t0, n);
    }
    return 0;
}

static long read_all(const char *path, char *buf, size_t bufsz, double *secs) {
    double t0 = now();
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open", path);
    long total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, bufsz);
        if (n < 0) die("read", path);
        if (n == 0) break;
        total += n;
    }
    close(fd);
    *secs = now() - t0;
    return total;
}

/* seqread FILE PASSES: read the whole file with 1 MiB reads PASSES times (each a new open). */
static int cmd_seqread(const char *path, int passes) {
    size_t bufsz = 1 << 20;
    char *buf = malloc(bufsz);
    if (!buf) die("malloc", NULL);
    for (int p = 0; p < passes; p++) {
        double s;
        long n = read_all(path, buf, bufsz, &s);
        printf("pass%d=%.9f\nbytes=%ld\n", p, s, n);
    }
    free(buf);
    return 0;
}

/* randread FILE N: one warming sequential pass, then N preads of 4 KiB at random 4 KiB-aligned
 * offsets (fixed-seed xorshift) on one descriptor. */
static int cmd_randread(const char *path, long nops) {
    size_t bufsz = 1 << 20;
    char *buf = malloc(bufsz);
    if (!buf) die("malloc", NULL);
    double s;
    long size = read_all(path, buf, bufsz, &s);
    printf("warm=%.9f\n", s);
    long blocks = size / 4096;
    if (blocks < 1) { fprintf(stderr, "file too small\n"); return 1; }
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open", path);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    double t0 = now();
    for (long i = 0; i < nops; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        off_t off = (off_t)(x % (uint64_t)blocks) * 4096;
        if (pread(fd, buf, 4096, off) != 4096) die("pread", path);
    }
    double t1 = now();
    close(fd);
    printf("secs=%.9f\nops=%ld\n", t1 - t0, nops);
    free(buf);
    return 0;
}

/* append LISTFILE: for each path (one a line) open O_WRONLY|O_APPEND, write one byte, close. */
static int cmd_append(const char *listfile) {
    FILE *f = fopen(listfile, "r");
    if (!f) die("fopen", listfile);
    size_t cap = 1024, n = 0;
    char **paths = malloc(cap * sizeof *paths);
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        size_t l = strlen(line);
        if (l && line[l - 1] == '\n') line[--l] = 0;
        if (!l) continue;
        if (n == cap) { cap *= 2; paths = realloc(paths, cap * sizeof *paths); }
        paths[n++] = strdup(line);
    }
    fclose(f);
    double t0 = now();
    for (size_t i = 0; i < n; i++) {
        int fd = open(paths[i], O_WRONLY | O_APPEND);
        if (fd < 0) die("open", paths[i]);
        if (write(fd, "x", 1) != 1) die("write", paths[i]);
        if (close(fd) < 0) die("close", paths[i]);
    }
    double t1 = now();
    printf("secs=%.9f\nfiles=%zu\n", t1 - t0, n);
    return 0;
}

/* create DIR NDIRS NFILES SIZE: mkdir NDIRS new directories under DIR and create NFILES files of
 * SIZE bytes spread evenly over them. */
static int cmd_create(const char *dir, int ndirs, long nfiles, long size) {
    char *buf = calloc(1, size > 0 ? size : 1);
    memset(buf, 'c', size);
    char path[4096];
    double t0 = now();
    for (int d = 0; d < ndirs; d++) {
        snprintf(path, sizeof path, "%s/new%03d", dir, d);
        if (mkdir(path, 0755) < 0) die("mkdir", path);
    }
    for (long i = 0; i < nfiles; i++) {
        snprintf(path, sizeof path, "%s/new%03ld/f%06ld", dir, i % ndirs, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0) die("open", path);
        if (size > 0 && write(fd, buf, size) != size) die("write", path);
        if (close(fd) < 0) die("close", path);
    }
    double t1 = now();
    printf("secs=%.9f\nfiles=%ld\n", t1 - t0, nfiles);
    free(buf);
    return 0;
}

/* bigcopyup FILE: open O_WRONLY, write one byte at offset 0 (time until it returns), fsync. */
static int cmd_bigcopyup(const char *path) {
    double t0 = now();
    int fd = open(path, O_WRONLY);
    if (fd < 0) die("open", path);
    if (pwrite(fd, "y", 1, 0) != 1) die("pwrite", path);
    double t1 = now();
    if (fsync(fd) < 0) die("fsync", path);
    double t2 = now();
    close(fd);
    printf("write=%.9f\nsynced=%.9f\n", t1 - t0, t2 - t0);
    return 0;
}

/* gen DIR NTOP NSUB NFILES: DIR/dNN/sNNN/fNNNNN, NFILES empty files in each of NTOP*NSUB dirs. */
static int cmd_gen(const char *dir, int ntop, int nsub, long nfiles) {
    char path[4096];
    long made = 0;
    double t0 = now();
    for (int t = 0; t < ntop; t++) {
        snprintf(path, sizeof path, "%s/d%02d", dir, t);
        if (mkdir(path, 0755) < 0 && errno != EEXIST) die("mkdir", path);
        for (int s = 0; s < nsub; s++) {
            snprintf(path, sizeof path, "%s/d%02d/s%03d", dir, t, s);
            if (mkdir(path, 0755) < 0 && errno != EEXIST) die("mkdir", path);
            int dfd = open(path, O_RDONLY | O_DIRECTORY);
            if (dfd < 0) die("open", path);
            for (long f = 0; f < nfiles; f++) {
                char name[32];
                snprintf(name, sizeof name, "f%05ld", f);
                int fd = openat(dfd, name, O_WRONLY | O_CREAT, 0644);
                if (fd < 0) die("openat", name);
                close(fd);
                made++;
            }
            close(dfd);
        }
    }
    printf("secs=%.9f\nfiles=%ld\n", now() - t0, made);
    return 0;
}

/* exec PATH N: fork and execve PATH (no arguments, empty environment) N times, one after the
 * other, each waited for; fails unless every child exits 0. */
static int cmd_exec(const char *path, long n) {
    char *const argv[] = {(char *)path, NULL};
    char *const envp[] = {NULL};
    double t0 = now();
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) die("fork", path);
        if (pid == 0) {
            execve(path, argv, envp);
            _exit(127);
        }
        int st;
        if (waitpid(pid, &st, 0) < 0) die("waitpid", path);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "exec %s: child status %d\n", path, st);
            return 1;
        }
    }
    printf("execs=%ld\nsecs=%.9f\n", n, now() - t0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "list")) return cmd_list(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc >= 4 && !strcmp(argv[1], "seqread")) return cmd_seqread(argv[2], atoi(argv[3]));
    if (argc >= 4 && !strcmp(argv[1], "randread")) return cmd_randread(argv[2], atol(argv[3]));
    if (argc >= 3 && !strcmp(argv[1], "append")) return cmd_append(argv[2]);
    if (argc >= 6 && !strcmp(argv[1], "create"))
        return cmd_create(argv[2], atoi(argv[3]), atol(argv[4]), atol(argv[5]));
    if (argc >= 3 && !strcmp(argv[1], "bigcopyup")) return cmd_bigcopyup(argv[2]);
    if (argc >= 4 && !strcmp(argv[1], "exec")) return cmd_exec(argv[2], atol(argv[3]));
    if (argc >= 6 && !strcmp(argv[1], "gen"))
        return cmd_gen(argv[2], atoi(argv[3]), atoi(argv[4]), atol(argv[5]));
    fprintf(stderr, "usage: bench_helper list|seqread|randread|append|create|bigcopyup|gen ...\n");
    return 2;
}
