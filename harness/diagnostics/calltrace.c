/* Preloaded (LD_PRELOAD) into a process to say which of its calls into the C library fail, and who made them.
 *
 * A GPU driver that fails inside a confined sandbox reports one opaque code ("CUDA error 304: OS call failed").
 * The machines with the GPU have no strace; this library, built there with the system's C compiler by
 * harness/diagnostics/calltrace.py, appends one line to the file named by $CALLTRACE_LOG (else standard error)
 * for each call below that fails:
 *
 *     calltrace: <library of the caller>: <call>(<path or argument>) = <errno>
 *
 * and one for each program started (execve, execv, execvp), failed or not. The library of the caller comes from
 * dladdr on the return address, so the driver's failures can be told from the interpreter's (which probes many
 * missing files).
 *
 * The calls seen: open, open64, openat, openat64 and their fortified forms (__open_2 ...), fopen, fopen64, access,
 * stat, lstat, stat64, lstat64 and the names older programs call them by (__xstat ...), mkdir, unlink, mknod,
 * socket, socketpair, connect, ioctl, mmap, memfd_create, shm_open and the exec calls. Not seen: a call a library
 * makes inside itself (the dynamic loader's own opens, glibc's internal calls) or through syscall(), and dlopen: a
 * wrapper would change where a library is looked for (glibc takes the search path from the caller's address).
 *
 * It only observes: every call goes on to the C library's own function, and its result and errno are returned. The
 * arguments a report shows are copied by the kernel (``copied``), never read directly, so a bad address cannot
 * crash the program; the descriptors of the library's own are kept far above the program's.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#if defined(__x86_64__)
#define GLIBC_FIRST "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define GLIBC_FIRST "GLIBC_2.17"
#endif

static const char *error_name(int err) {
#if __GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32)
    const char *name = strerrorname_np(err);
    if (name) return name;
#endif
    static __thread char number[16];
    snprintf(number, sizeof number, "errno %d", err);
    return number;
}

/* A descriptor of this library's own, moved far above the ones a program uses, so that it does not take the number
 * the program's next open would get. */
static int moved_high(int fd) {
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 900);
    if (high < 0) return fd;
    close(fd);
    return high;
}

/* The log's descriptor: opened once per program, moved far above the descriptors a program uses (so that it does not
 * take the number the program's next open would get), and opened again if the program has closed it or reused its
 * number (as a child does that closes every descriptor before exec). */
static int log_fd = -1;
static dev_t log_dev;
static ino_t log_ino;

static int log_target(void) {
    struct stat st;
    if (log_fd >= 0 && fstat(log_fd, &st) == 0 && st.st_dev == log_dev && st.st_ino == log_ino) return log_fd;
    log_fd = -1;
    const char *path = getenv("CALLTRACE_LOG");
    static __typeof__(open) *real_open_for_log;
    if (!real_open_for_log) real_open_for_log = (__typeof__(open) *)dlsym(RTLD_NEXT, "open");
    if (!path || !real_open_for_log) return 2;
    int fd = real_open_for_log(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return 2;
    fd = moved_high(fd);
    if (fstat(fd, &st) != 0) {
        close(fd);
        return 2;
    }
    log_dev = st.st_dev;
    log_ino = st.st_ino;
    return log_fd = fd;
}

/* One line, written whole (one write, O_APPEND): a line too long is cut, and still ends the line. */
static void report(const char *call, const char *what, int err, void *caller) {
    Dl_info info;
    const char *lib = (caller && dladdr(caller, &info) && info.dli_fname) ? info.dli_fname : "?";
    char line[1024];
    int n = snprintf(line, sizeof line, "calltrace: %s: %s(%s) = %s\n", lib, call, what ? what : "",
                     err ? error_name(err) : "called");
    if (n <= 0) return;
    if (n >= (int)sizeof line) {
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    ssize_t ignored = write(log_target(), line, (size_t)n);
    (void)ignored;
}

/* A copy of what the caller passed, for the report, made by the kernel: written into a pipe of this library's own,
 * which fails with EFAULT where reading the address directly would crash the program (a bad address that the call
 * refused for another reason first). Not process_vm_readv: the sandbox's seccomp filter refuses it. One pipe per
 * process (a child made by fork makes its own), used under a lock; at most size - 1 bytes. */
static int probe_pipe[2] = {-1, -1};
static ino_t probe_ino;  /* the pipe's: a descriptor the program closed and whose number it reused is not ours */
static pid_t probe_owner;
static int probe_lock;

/* A child forked while another thread of its parent held the lock would wait for it for ever: the child starts
 * with it free. */
static void free_the_lock_in_the_child(void) { probe_lock = 0; }
__attribute__((constructor)) static void calltrace_init(void) {
    pthread_atfork(NULL, NULL, free_the_lock_in_the_child);
}

static int probe_pipe_is_ours(void) {
    struct stat st;
    return probe_owner == getpid() && probe_pipe[0] >= 0 && fstat(probe_pipe[0], &st) == 0 && S_ISFIFO(st.st_mode)
           && st.st_ino == probe_ino && fstat(probe_pipe[1], &st) == 0 && st.st_ino == probe_ino;
}

static size_t copied(const void *src, char *dst, size_t size) {
    if (!src || size < 2) return 0;
    size_t n = 0;
    while (__atomic_exchange_n(&probe_lock, 1, __ATOMIC_ACQUIRE)) {}
    if (!probe_pipe_is_ours()) {
        int p[2];
        struct stat st;
        if (pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0 && fstat(p[0], &st) == 0) {
            probe_pipe[0] = moved_high(p[0]);
            probe_pipe[1] = moved_high(p[1]);
            probe_ino = st.st_ino;
            probe_owner = getpid();
        } else {
            probe_pipe[0] = probe_pipe[1] = -1;
        }
    }
    if (probe_pipe[1] >= 0) {
        ssize_t w = write(probe_pipe[1], src, size - 1);
        ssize_t r = w > 0 ? read(probe_pipe[0], dst, (size_t)w) : 0;
        n = r > 0 ? (size_t)r : 0;
    }
    __atomic_store_n(&probe_lock, 0, __ATOMIC_RELEASE);
    return n;
}

static const char *shown(const char *path, char *dst, size_t size) {
    size_t n = copied(path, dst, size);
    if (!n) return path ? "<not readable>" : "<null>";
    dst[n] = 0;
    return dst;
}

/* The C library's own function, looked up once. */
#define REAL(name) static __typeof__(name) *real_##name; \
    if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)
#define CALLER __builtin_return_address(0)
/* Report a failed call (a negative result) with its errno, and leave errno as the call set it. */
#define IF_FAILED(call, path) do { if (r < 0) { int e = errno; char copy[512]; \
    report(call, shown(path, copy, sizeof copy), e, CALLER); errno = e; } } while (0)
#define IF_NULL(call, path) do { if (!f) { int e = errno; char copy[512]; \
    report(call, shown(path, copy, sizeof copy), e, CALLER); errno = e; } } while (0)

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
/* What a program built with _FORTIFY_SOURCE calls where the flags are not known when it is compiled. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);
int __open_2(const char *path, int flags) {
    REAL(__open_2); int r = real___open_2(path, flags); IF_FAILED("open", path); return r;
}
int __open64_2(const char *path, int flags) {
    REAL(__open64_2); int r = real___open64_2(path, flags); IF_FAILED("open", path); return r;
}
int __openat_2(int dirfd, const char *path, int flags) {
    REAL(__openat_2); int r = real___openat_2(dirfd, path, flags); IF_FAILED("openat", path); return r;
}
int __openat64_2(int dirfd, const char *path, int flags) {
    REAL(__openat64_2); int r = real___openat64_2(dirfd, path, flags); IF_FAILED("openat", path); return r;
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
#if defined(GLIBC_FIRST) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
/* The names a program built against glibc before 2.33 calls stat by; glibc keeps them only as old versions, which
 * dlsym does not return. */
typedef int xstat_fn(int, const char *, void *);
#define XSTAT(name, call) \
    int name(int ver, const char *path, void *st); \
    int name(int ver, const char *path, void *st) { \
        static xstat_fn *real; \
        if (!real) real = (xstat_fn *)dlvsym(RTLD_NEXT, #name, GLIBC_FIRST); \
        if (!real) { errno = ENOSYS; return -1; } \
        int r = real(ver, path, st); IF_FAILED(call, path); return r; \
    }
XSTAT(__xstat, "stat")
XSTAT(__xstat64, "stat")
XSTAT(__lxstat, "lstat")
XSTAT(__lxstat64, "lstat")
#endif
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
int socketpair(int domain, int type, int protocol, int fds[2]) {
    char what[32];
    snprintf(what, sizeof what, "domain %d", domain);
    REAL(socketpair); int r = real_socketpair(domain, type, protocol, fds); IF_FAILED("socketpair", what); return r;
}
int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    REAL(connect); int r = real_connect(fd, addr, len);
    if (r < 0) {
        int e = errno;
        struct sockaddr_un un;
        char what[160] = "<not readable>";
        size_t n = len < sizeof un ? len : sizeof un;
        if (n > offsetof(struct sockaddr_un, sun_path) && copied(addr, (char *)&un, n + 1) == n) {
            const char *path = un.sun_path;
            int size = (int)(n - offsetof(struct sockaddr_un, sun_path));
            if (un.sun_family != AF_UNIX) snprintf(what, sizeof what, "family %d", un.sun_family);
            else if (path[0]) snprintf(what, sizeof what, "unix %.*s", size, path);
            else snprintf(what, sizeof what, "unix @%.*s", size - 1, path + 1);
        } else if (n >= sizeof(sa_family_t) && copied(addr, (char *)&un, sizeof(sa_family_t) + 1)) {
            snprintf(what, sizeof what, "family %d", un.sun_family);
        }
        report("connect", what, e, CALLER);
        errno = e;
    }
    return r;
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
int memfd_create(const char *name, unsigned int flags) {
    REAL(memfd_create); int r = real_memfd_create(name, flags); IF_FAILED("memfd_create", name); return r;
}
int shm_open(const char *name, int flags, mode_t mode) {
    REAL(shm_open); int r = real_shm_open(name, flags, mode); IF_FAILED("shm_open", name); return r;
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
