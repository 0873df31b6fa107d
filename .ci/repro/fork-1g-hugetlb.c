/*
 * Does a fork()ed child keep the private hugetlb page it shares with its parent?
 * (the reproducer behind .ci/known-kernel-defects; stand-alone, no project code)
 *
 * Usage, as root (PFNs in /proc/self/pagemap and /dev/kmsg need it):
 *   cc -O2 -o fork1g .ci/repro/fork-1g-hugetlb.c
 *   echo 2 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
 *   ./fork1g 1073741824 100          # read mode: only the child touches the page after fork
 *   ./fork1g 1073741824 100 write    # write mode: the owner also writes while the child maps it
 *   echo 0 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
 * Arguments: SIZE (hugetlb page size in bytes; the mapping is one page), TRIES, and the mode.
 *
 * Each try runs in a fresh process, the owner: it maps one MAP_PRIVATE|MAP_ANONYMOUS|
 * MAP_HUGETLB page of SIZE (its reservation), fills it with 0x01 and forks a child.  The child
 * reads its pagemap entry (PFN, present bit), checks every 4 KiB of the page for 0x01, and
 * reads its pagemap entry again.  In write mode the owner then writes one byte (a copy-on-write
 * fault of a page the child maps) and the child checks the page once more.  The kernel's
 * documented behaviour (Documentation/admin-guide/mm/hugetlbpage.rst; mm/hugetlb.c): with a
 * free page the owner gets a copy and the child keeps the original; with none, the kernel
 * unmaps the page from the child to keep the owner's reservation, and the child is killed by
 * SIGBUS at its next access ("PID n killed due to inadequate hugepage pool" in the kernel log).
 *
 * One line per try: free_hugepages before the try and right before fork(), the owner's and the
 * child's PFN/present bit before and after each scan, the pages that did not read 0x01, how the
 * child ended (exit status or signal), the outcome, and the kernel log lines (/dev/kmsg) logged
 * during the try.  Outcomes:
 *   ok      the child read 0x01 everywhere and exited 0
 *   lost    the child exited and saw pages that did not read 0x01 (data loss)
 *   sigbus  the child was killed by SIGBUS (documented when the owner COWed with no free page)
 *   signal  the child was killed by another signal
 *   setup   the owner could not map the page (mmap errno shown; e.g. an empty pool), or a pipe,
 *           fork or wait of the reproducer itself failed
 * A summary line counts the tries by outcome.  Exit status: 1 if any try was "lost" or
 * "signal", else 0 (sigbus and setup are reported, not judged); 2 for bad arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/mman.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define STEP 4096UL
#define TRY_ALARM 900 /* seconds: a try that hangs ends as a signal (SIGALRM), not forever */

struct pm { int ok, present; uint64_t pfn; };

struct shared { /* written by the owner and its child, read by main after the try */
	int mmap_errno, forked, child_status, write_done;
	long free_before_fork;
	struct pm owner_before_fork, owner_after_write;
	struct pm child_before, child_after, child_after_owner_write, child_after2;
	int scanned, scanned2; /* 1 once the child finished that scan */
	size_t bad, bad2, first_bad; int first_bad_val;
};

static size_t size;
static int write_mode;
static struct shared *sh;

static long read_long(const char *path) {
	char buf[64]; long v = -1; int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	if (n > 0) { buf[n] = 0; v = strtol(buf, NULL, 10); }
	close(fd);
	return v;
}

static long pool(const char *name) {
	char path[256];
	snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-%zukB/%s", size >> 10, name);
	return read_long(path);
}

static struct pm pagemap(const void *addr) {
	struct pm r = {0}; uint64_t e;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0) return r;
	if (pread(fd, &e, sizeof(e), (off_t)((uintptr_t)addr / STEP * sizeof(e))) == sizeof(e)) {
		r.ok = 1; r.present = (int)(e >> 63 & 1); r.pfn = e & ((1ULL << 55) - 1);
	}
	close(fd);
	return r;
}

static size_t scan(const volatile char *mem, int record) {
	size_t bad = 0, j;
	for (j = 0; j < size; j += STEP)
		if (mem[j] != 1) {
			if (!bad && record) { sh->first_bad = j; sh->first_bad_val = (unsigned char)mem[j]; }
			bad++;
		}
	return bad;
}

static void child(char *mem, int to_owner, int from_owner) {
	char c = 0;
	alarm(TRY_ALARM);
	sh->child_before = pagemap(mem);
	sh->bad = scan(mem, 1);
	sh->scanned = 1;
	sh->child_after = pagemap(mem);
	if (write_mode) {
		if (write(to_owner, "s", 1) != 1 || read(from_owner, &c, 1) != 1) _exit(3);
		sh->child_after_owner_write = pagemap(mem);
		sh->bad2 = scan(mem, !sh->bad); /* SIGBUS here if the kernel unmapped the page */
		sh->scanned2 = 1;
		sh->child_after2 = pagemap(mem);
	}
	_exit(sh->bad || sh->bad2 ? 1 : 0);
}

static int owner(void) {
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (__builtin_ctzll(size) << MAP_HUGE_SHIFT);
	int up[2], down[2], st;
	char c;
	alarm(TRY_ALARM);
	char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (mem == MAP_FAILED) { sh->mmap_errno = errno; return 2; }
	memset(mem, 1, size);
	if (pipe(up) || pipe(down)) return 3;
	sh->owner_before_fork = pagemap(mem);
	sh->free_before_fork = pool("free_hugepages");
	pid_t pid = fork();
	if (pid < 0) return 3;
	if (!pid) { close(up[0]); close(down[1]); child(mem, up[1], down[0]); }
	sh->forked = 1;
	close(up[1]); close(down[0]);
	if (write_mode && read(up[0], &c, 1) == 1) {
		mem[0] = 2; /* COW fault of a page the child maps */
		sh->write_done = 1;
		sh->owner_after_write = pagemap(mem);
		if (write(down[1], "g", 1) != 1) return 3;
	}
	if (waitpid(pid, &st, 0) != pid) return 3;
	sh->child_status = st;
	return 0;
}

static int kmsg_open(void) {
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd >= 0) lseek(fd, 0, SEEK_END);
	return fd;
}

/* Print the kernel log records logged since kmsg_open(); returns how many. */
static int kmsg_drain(int fd) {
	char rec[8192]; int n = 0;
	if (fd < 0) return 0;
	for (;;) {
		ssize_t r = read(fd, rec, sizeof(rec) - 1);
		if (r < 0 && errno == EPIPE) continue; /* overwritten records: skip ahead */
		if (r <= 0) break;
		rec[r] = 0;
		char *msg = strchr(rec, ';'), *end;
		msg = msg ? msg + 1 : rec;
		if ((end = strchr(msg, '\n'))) *end = 0;
		printf("%s%s", n++ ? " | " : " kmsg: ", msg);
	}
	return n;
}

static void pm_print(const char *what, struct pm p) {
	if (!p.ok) printf(" %s -", what);
	else printf(" %s %s%#llx", what, p.present ? "P:" : "np:", (unsigned long long)p.pfn);
}

enum { OK, LOST, SIGBUS_, SIGNAL, SETUP, NOUT };
static const char *const outcome_name[NOUT] = {"ok", "lost", "sigbus", "signal", "setup"};

int main(int argc, char **argv) {
	int counts[NOUT] = {0}, i, st, kfd;
	char *end;
	if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "read") && strcmp(argv[3], "write"))) {
		fprintf(stderr, "usage: %s SIZE TRIES [read|write]\n", argv[0]);
		return 2;
	}
	size = strtoull(argv[1], &end, 0);
	int n = atoi(argv[2]);
	write_mode = argc == 4 && !strcmp(argv[3], "write");
	if (*end || size < STEP || (size & (size - 1)) || n < 1) {
		fprintf(stderr, "%s: SIZE must be a power of two >= 4096 and TRIES >= 1\n", argv[0]);
		return 2;
	}
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED) { perror("mmap"); return 2; }
	kfd = kmsg_open();
	printf("size %zu, %d tries, %s mode, pool nr %ld free %ld resv %ld%s%s\n", size, n,
	       write_mode ? "write" : "read", pool("nr_hugepages"), pool("free_hugepages"),
	       pool("resv_hugepages"), getuid() ? " (not root: PFNs read 0)" : "",
	       kfd < 0 ? " (no /dev/kmsg)" : "");
	fflush(stdout);
	for (i = 0; i < n; i++) {
		int out;
		memset(sh, 0, sizeof(*sh));
		if (kfd >= 0) lseek(kfd, 0, SEEK_END);
		long free_before = pool("free_hugepages");
		pid_t w = fork();
		if (w < 0) { perror("fork"); return 3; }
		if (!w) _exit(owner());
		waitpid(w, &st, 0);
		int cs = sh->child_status;
		printf("try %d: free %ld, before fork %ld;", i + 1, free_before, sh->free_before_fork);
		if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			out = SETUP;
			if (sh->mmap_errno) printf(" mmap: %s;", strerror(sh->mmap_errno));
			else if (WIFSIGNALED(st)) printf(" owner killed by signal %d (%s);", WTERMSIG(st), strsignal(WTERMSIG(st)));
			else printf(" owner exit %d;", WEXITSTATUS(st));
		} else {
			pm_print("owner", sh->owner_before_fork);
			pm_print("child-before", sh->child_before);
			pm_print("child-after", sh->child_after);
			printf(" bad %zu/%zu", sh->scanned ? sh->bad : 0, size / STEP);
			if (write_mode) {
				pm_print("owner-after-write", sh->owner_after_write);
				pm_print("child-after-owner-write", sh->child_after_owner_write);
				if (sh->scanned2) pm_print("child-after2", sh->child_after2);
				printf(" bad2 %s", sh->scanned2 ? "" : "(scan not finished)");
				if (sh->scanned2) printf("%zu/%zu", sh->bad2, size / STEP);
			}
			if (sh->bad || sh->bad2)
				printf(" first bad at %#zx reads %#x", sh->first_bad, sh->first_bad_val);
			if (WIFSIGNALED(cs)) {
				printf("; child killed by signal %d (%s)", WTERMSIG(cs), strsignal(WTERMSIG(cs)));
				out = WTERMSIG(cs) == SIGBUS ? SIGBUS_ : SIGNAL;
			} else {
				printf("; child exit %d", WEXITSTATUS(cs));
				out = sh->bad || sh->bad2 ? LOST : WEXITSTATUS(cs) ? SETUP : OK;
			}
			printf(";");
		}
		counts[out]++;
		printf(" outcome %s;", outcome_name[out]);
		kmsg_drain(kfd);
		printf("\n");
		fflush(stdout);
	}
	printf("summary: size %zu, %s mode, %d tries:", size, write_mode ? "write" : "read", n);
	for (i = 0; i < NOUT; i++) printf(" %s %d", outcome_name[i], counts[i]);
	printf("; pool after: nr %ld free %ld\n", pool("nr_hugepages"), pool("free_hugepages"));
	return counts[LOST] || counts[SIGNAL] ? 1 : 0;
}
