/* Preloaded (LD_PRELOAD) into a process to say which of its calls into the C library fail, and who made them.
 *
 * A GPU driver that fails inside a confined sandbox reports one opaque code ("CUDA error 304: OS call failed").
 * The machines with the GPU have no strace; this library, built there with the system's C compiler by
 * harness/diagnostics/calltrace.py, writes one line to standard error for each call below that fails:
 *
 *     calltrace: <library of the caller>: <call>(<path or argument>) = <errno>
 *
 * and one for each program started (execve, execv, execvp), failed or not. The library of the caller comes from
 * dladdr on the return address, so the driver's failures can be told from the interpreter's (which probes many
 * missing files).
 * It only observes: every call goes on to the C library's own function, and its result and errno are returned.
 * Calls made through the names of glibc before 2.33 (__xstat and its kin) are not seen.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

static const char *error_name(int err) {
#if __GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32)
    const char *name = strerrorname_np(err);
    if (name) return name;
#endif
    static __thread char number[16];
    snprintf(number, sizeof number, "errno %d", err);
    return number;
}

static void report(const char *call, const char *what, int err, void *caller) {
    Dl_info info;
    const char *lib = (caller && dladdr(caller, &info) && info.dli_fname) ? info.dli_fname : "?";
    char line[1024];
    int n = snprintf(line, sizeof line, "calltrace: %s: %s(%s) = %s\n", lib, call, what ? what : "",
                     err ? error_name(err) : "called");
    if (n > 0) {
        ssize_t ignored = write(2, line, n < (int)sizeof line ? (size_t)n : sizeof line - 1);
        (void)ignored;
    }
}

/* The C library's own function, looked up once. */
#define REAL(name) static __typeof__(name) *real_##name; \
    if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)
#define CALLER __builtin_return_address(0)
/* Report a failed call (a negative result) with its errno, and leave errno as the call set it. */
#define IF_FAILED(call, what) do { if (r < 0) { int e = errno; report(call, what, e, CALLER); errno = e; } } while (0)
#define IF_NULL(call, what) do { if (!f) { int e = errno; report(call, what, e, CALLER); errno = e; } } while (0)

static mode_t mode_of(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    REAL(open); int r = real_open(path, flags, mode); IF_FAILED("open", path); return r;
}
int open64(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    REAL(open64); int r = real_open64(path, flags, mode); IF_FAILED("open", path); return r;
}
int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    REAL(openat); int r = real_openat(dirfd, path, flags, mode); IF_FAILED("openat", path); return r;
}
int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    REAL(openat64); int r = real_openat64(dirfd, path, flags, mode); IF_FAILED("openat", path); return r;
}
FILE *fopen(const char *path, const char *how) {
    REAL(fopen); FILE *f = real_fopen(path, how); IF_NULL("fopen", path); return f;
}
FILE *fopen64(const char *path, const char *how) {
    REAL(fopen64); FILE *f = real_fopen64(path, how); IF_NULL("fopen", path); return f;
}
int access(const char *path, int how) {
    REAL(access); int r = real_access(path, how); IF_FAILED("access", path); return r;
}
int stat(const char *path, struct stat *st) {
    REAL(stat); int r = real_stat(path, st); IF_FAILED("stat", path); return r;
}
int lstat(const char *path, struct stat *st) {
    REAL(lstat); int r = real_lstat(path, st); IF_FAILED("lstat", path); return r;
}
int stat64(const char *path, struct stat64 *st) {
    REAL(stat64); int r = real_stat64(path, st); IF_FAILED("stat", path); return r;
}
int lstat64(const char *path, struct stat64 *st) {
    REAL(lstat64); int r = real_lstat64(path, st); IF_FAILED("lstat", path); return r;
}
int mkdir(const char *path, mode_t mode) {
    REAL(mkdir); int r = real_mkdir(path, mode); IF_FAILED("mkdir", path); return r;
}
int unlink(const char *path) {
    REAL(unlink); int r = real_unlink(path); IF_FAILED("unlink", path); return r;
}
int mknod(const char *path, mode_t mode, dev_t dev) {
    REAL(mknod); int r = real_mknod(path, mode, dev); IF_FAILED("mknod", path); return r;
}
int socket(int domain, int type, int protocol) {
    char what[32];
    snprintf(what, sizeof what, "domain %d", domain);
    REAL(socket); int r = real_socket(domain, type, protocol); IF_FAILED("socket", what); return r;
}
int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    char what[160] = "";
    if (addr && addr->sa_family == AF_UNIX) {
        const char *path = ((const struct sockaddr_un *)addr)->sun_path;
        snprintf(what, sizeof what, "unix %s%.100s", path[0] ? "" : "@", path[0] ? path : path + 1);
    } else if (addr) {
        snprintf(what, sizeof what, "family %d", addr->sa_family);
    }
    REAL(connect); int r = real_connect(fd, addr, len); IF_FAILED("connect", what); return r;
}
int ioctl(int fd, unsigned long request, ...) {
    va_list ap; va_start(ap, request); void *arg = va_arg(ap, void *); va_end(ap);
    REAL(ioctl); int r = real_ioctl(fd, request, arg);
    if (r < 0) {
        int e = errno;
        char link[64], target[256] = "?", what[320];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) target[n] = 0;
        snprintf(what, sizeof what, "%s, request 0x%lx", target, request);
        report("ioctl", what, e, CALLER);
        errno = e;
    }
    return r;
}
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    REAL(mmap); void *p = real_mmap(addr, len, prot, flags, fd, off);
    if (p == MAP_FAILED) {
        int e = errno;
        char what[64];
        snprintf(what, sizeof what, "fd %d, %zu bytes", fd, len);
        report("mmap", what, e, CALLER);
        errno = e;
    }
    return p;
}
int execve(const char *path, char *const argv[], char *const envp[]) {
    report("execve", path, 0, CALLER);
    REAL(execve); int r = real_execve(path, argv, envp); IF_FAILED("execve", path); return r;
}
int execv(const char *path, char *const argv[]) {
    report("execve", path, 0, CALLER);
    REAL(execv); int r = real_execv(path, argv); IF_FAILED("execve", path); return r;
}
int execvp(const char *file, char *const argv[]) {
    report("execve", file, 0, CALLER);
    REAL(execvp); int r = real_execvp(file, argv); IF_FAILED("execve", file); return r;
}
