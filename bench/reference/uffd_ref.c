/*
 * uffd_ref: the C reference for bench/fault_service.py.
 *
 * Does one fault-service job the way the Python side does it, and prints one JSON line:
 *   {"elapsed_ns": N, "faults": F, "served": S}
 *
 * usage: uffd_ref JOB PLACEMENT PAGE THREADS NPAGES
 *   JOB        copy      MISSING faults (memset), resolved with UFFDIO_COPY from a memfd source
 *              zero      MISSING faults (a read: memcmp(p, p + 1, n - 1)), UFFDIO_ZEROPAGE
 *              wp        sync write-protect faults (memset), resolved with UFFDIO_WRITEPROTECT mode 0
 *              wpasync   UFFD_FEATURE_WP_ASYNC: the kernel resolves the write faults, no handler
 *   PLACEMENT  thread | process (fork after the handshake) | scm_rights (a forked server that
 *              receives the uffd over a unix socket) | none (wpasync)
 *   PAGE       4k (private anon) | 2m (MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB, 2 MiB)
 *   THREADS    faulting threads; each touches its own contiguous share of the pages
 *
 * The handler loop is the plain one of the kernel's uffd-unit-tests (uffd_poll_thread):
 * poll() the uffd and a control pipe, read pending messages in one read(2), resolve each.
 * Only the faulting phase is timed: from the moment all faulting threads are released until
 * the last one finishes (CLOCK_MONOTONIC).  Setup (mmap, handshake, fork, register) is not.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* older uapi headers lack the newer feature bits */
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif

static void die(const char *what)
{
	fprintf(stderr, "uffd_ref: %s: %s\n", what, strerror(errno));
	exit(2);
}

static int uffd = -1;
static char *area, *src;
static size_t psize, npages;
static int job_zero, job_wp;
static int ctl[2];        /* parent -> handler: stop */
static int report[2];     /* handler -> parent: pages served */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* CPU time (ns) a task has run: one thread, or every thread of a process (/proc schedstat) */
static pid_t server_tid;

static uint64_t schedstat_ns(const char *path)
{
	unsigned long long ns = 0;
	FILE *f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%llu", &ns) != 1)
			ns = 0;
		fclose(f);
	}
	return ns;
}

static uint64_t handler_cpu_ns(pid_t pid, pid_t tid)
{
	char path[320];
	uint64_t sum = 0;
	if (tid) {
		snprintf(path, sizeof(path), "/proc/%d/task/%d/schedstat", pid, tid);
		return schedstat_ns(path);
	}
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	DIR *d = opendir(path);
	if (!d)
		return 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/schedstat", pid, e->d_name);
		sum += schedstat_ns(path);
	}
	closedir(d);
	return sum;
}

static void resolve(struct uffd_msg *m)
{
	unsigned long addr = m->arg.pagefault.address & ~(psize - 1);

	if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
		struct uffdio_writeprotect w = { .range = { addr, psize }, .mode = 0 };
		if (ioctl(uffd, UFFDIO_WRITEPROTECT, &w))
			die("UFFDIO_WRITEPROTECT");
		return;
	}
	if (job_zero) {
		struct uffdio_zeropage z = { .range = { addr, psize }, .mode = 0 };
		if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) && errno != EEXIST)
			die("UFFDIO_ZEROPAGE");
		return;
	}
	struct uffdio_copy c = { .dst = addr, .src = (unsigned long)src + (addr - (unsigned long)area),
				 .len = psize, .mode = 0 };
	if (ioctl(uffd, UFFDIO_COPY, &c)) {
		if (errno != EEXIST)
			die("UFFDIO_COPY");
		struct uffdio_range r = { addr, psize };
		ioctl(uffd, UFFDIO_WAKE, &r);
	}
}

static long serve(void)
{
	struct uffd_msg msgs[64];
	long served = 0;

	for (;;) {
		struct pollfd p[2] = { { uffd, POLLIN, 0 }, { ctl[0], POLLIN, 0 } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (p[1].revents)
			return served;
		ssize_t n = read(uffd, msgs, sizeof(msgs));
		if (n < 0) {
			if (errno == EAGAIN)
				continue;
			die("read uffd");
		}
		for (size_t i = 0; i < n / sizeof(msgs[0]); i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			resolve(&msgs[i]);
			served++;
		}
	}
}

static void *serve_thread(void *arg)
{
	(void)arg;
	server_tid = syscall(SYS_gettid);
	return (void *)serve();
}

static void serve_child(void)
{
	long served = serve();
	if (write(report[1], &served, sizeof(served)) != sizeof(served))
		_exit(3);
	_exit(0);
}

/* faulting side */
static pthread_barrier_t go;
static int nthreads;
static uint64_t t_start[64], t_end[64];

static void touch(int i)
{
	size_t per = npages / nthreads;
	char *p = area + (size_t)i * per * psize;
	size_t len = per * psize;

	t_start[i] = now_ns();
	if (job_zero) {
		if (memcmp(p, p + 1, len - 1))
			fprintf(stderr, "uffd_ref: zero page not zero\n");
	} else {
		memset(p, 0x5a, len);
	}
	t_end[i] = now_ns();
}

static void *fault_thread(void *arg)
{
	int i = (int)(long)arg;
	pthread_barrier_wait(&go);
	touch(i);
	return NULL;
}

static void send_fd(int sock, int fd)
{
	char buf[CMSG_SPACE(sizeof(int))] = { 0 };
	char byte = 'u';
	struct iovec iov = { &byte, 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = buf,
			     .msg_controllen = sizeof(buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &mh, 0) != 1)
		die("sendmsg");
}

static int recv_fd(int sock)
{
	char buf[CMSG_SPACE(sizeof(int))] = { 0 };
	char byte;
	struct iovec iov = { &byte, 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = buf,
			     .msg_controllen = sizeof(buf) };
	if (recvmsg(sock, &mh, 0) != 1)
		die("recvmsg");
	int fd;
	memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
	return fd;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: uffd_ref copy|zero|wp|wpasync thread|process|scm_rights|none 4k|2m THREADS NPAGES\n");
		return 2;
	}
	const char *job = argv[1], *placement = argv[2];
	int huge = !strcmp(argv[3], "2m");
	nthreads = atoi(argv[4]);
	npages = strtoul(argv[5], NULL, 0);
	int wpasync = !strcmp(job, "wpasync");
	job_zero = !strcmp(job, "zero");
	job_wp = !strcmp(job, "wp") || wpasync;
	psize = huge ? 2ul << 20 : (size_t)sysconf(_SC_PAGESIZE);
	if (nthreads < 1 || nthreads > 64 || npages % nthreads)
		return 2;
	size_t size = npages * psize;

	int sock[2] = { -1, -1 };
	pid_t child = -1;
	if (pipe2(ctl, O_CLOEXEC) || pipe2(report, O_CLOEXEC))
		die("pipe");
	if (!strcmp(placement, "scm_rights")) {
		/* the server exists before the uffd does, as a VMM's memory server */
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock))
			die("socketpair");
	}

	int flags = MAP_PRIVATE | MAP_ANONYMOUS | (huge ? MAP_HUGETLB | MAP_HUGE_2MB : 0);
	area = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (area == MAP_FAILED)
		die("mmap area");
	if (!job_wp && !job_zero) {
		int mfd = memfd_create("uffd-ref-source", MFD_CLOEXEC);
		if (mfd < 0 || ftruncate(mfd, size))
			die("source memfd");
		src = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
		if (src == MAP_FAILED)
			die("mmap source");
		for (size_t i = 0; i < size / 4096; i++)
			memset(src + i * 4096, (int)(i & 0xff), 4096);
	}

	if (!strcmp(placement, "scm_rights")) {
		child = fork();
		if (child < 0)
			die("fork");
		if (child == 0) {
			close(sock[0]);
			uffd = recv_fd(sock[1]);
			serve_child();
		}
		close(sock[1]);
	}

	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0)
		die("userfaultfd");
	struct uffdio_api api = { .api = UFFD_API };
	if (job_wp)
		api.features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | (huge ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0);
	if (wpasync)
		api.features |= UFFD_FEATURE_WP_ASYNC;
	if (ioctl(uffd, UFFDIO_API, &api))
		die("UFFDIO_API");

	pthread_t server;
	if (!strcmp(placement, "thread")) {
		if (pthread_create(&server, NULL, serve_thread, NULL))
			die("pthread_create");
	} else if (!strcmp(placement, "process")) {
		child = fork();
		if (child < 0)
			die("fork");
		if (child == 0)
			serve_child();
	} else if (!strcmp(placement, "scm_rights")) {
		send_fd(sock[0], uffd);
	} else if (strcmp(placement, "none")) {
		fprintf(stderr, "uffd_ref: unknown placement %s\n", placement);
		return 2;
	}

	if (job_wp)
		memset(area, 1, size); /* populate, then protect */
	struct uffdio_register reg = { .range = { (unsigned long)area, size },
				       .mode = job_wp ? UFFDIO_REGISTER_MODE_WP : UFFDIO_REGISTER_MODE_MISSING };
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		die("UFFDIO_REGISTER");
	if (job_wp) {
		struct uffdio_writeprotect w = { .range = { (unsigned long)area, size },
						 .mode = UFFDIO_WRITEPROTECT_MODE_WP };
		if (ioctl(uffd, UFFDIO_WRITEPROTECT, &w))
			die("UFFDIO_WRITEPROTECT");
	}

	/* the timed phase; the handler's CPU time over it is read from /proc before and after */
	pid_t hpid = child > 0 ? child : getpid();
	if (!strcmp(placement, "thread"))
		while (!__atomic_load_n(&server_tid, __ATOMIC_ACQUIRE))
			sched_yield();
	uint64_t cpu0 = strcmp(placement, "none") ? handler_cpu_ns(hpid, server_tid) : 0;
	pthread_t th[64];
	pthread_barrier_init(&go, NULL, nthreads);
	for (int i = 1; i < nthreads; i++)
		if (pthread_create(&th[i], NULL, fault_thread, (void *)(long)i))
			die("pthread_create");
	fault_thread((void *)0);
	for (int i = 1; i < nthreads; i++)
		pthread_join(th[i], NULL);
	uint64_t t0 = t_start[0], t1 = t_end[0];
	for (int i = 1; i < nthreads; i++) {
		if (t_start[i] < t0)
			t0 = t_start[i];
		if (t_end[i] > t1)
			t1 = t_end[i];
	}

	uint64_t cpu1 = strcmp(placement, "none") ? handler_cpu_ns(hpid, server_tid) : 0;
	long served = 0;
	if (write(ctl[1], "x", 1) != 1)
		die("write ctl");
	if (!strcmp(placement, "thread")) {
		void *ret;
		pthread_join(server, &ret);
		served = (long)ret;
	} else if (child > 0) {
		if (read(report[0], &served, sizeof(served)) != sizeof(served))
			served = -1;
		waitpid(child, NULL, 0);
	}
	struct uffdio_range r = { (unsigned long)area, size };
	ioctl(uffd, UFFDIO_UNREGISTER, &r);
	printf("{\"elapsed_ns\": %llu, \"faults\": %zu, \"served\": %ld, \"handler_cpu_ns\": %llu}\n",
	       (unsigned long long)(t1 - t0), npages, served, (unsigned long long)(cpu1 - cpu0));
	return 0;
}
