/* Reproducer for .ci/known-kernel-defects: fork() children losing a 1 GiB hugetlb page. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <linux/mman.h>
static int one(size_t size) {
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (__builtin_ctzll(size) << MAP_HUGE_SHIFT);
	char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
	int st;
	if (mem == MAP_FAILED) { perror("mmap"); return 2; }
	memset(mem, 1, size);
	pid_t pid = fork();
	if (!pid) { size_t b = 0, j; for (j = 0; j < size; j += 4096) b += mem[j] != 1; if (b) fprintf(stderr, "lost %zu pages, first at %s\n", b, mem[0] != 1 ? "head" : "tail"); _exit(b ? 1 : 0); }
	waitpid(pid, &st, 0);
	return WEXITSTATUS(st);
}
int main(int argc, char **argv) {
	size_t size = strtoull(argv[1], 0, 0);
	int n = atoi(argv[2]), lost = 0, i, st;
	for (i = 0; i < n; i++) {
		pid_t w = fork();
		if (!w) _exit(one(size));
		waitpid(w, &st, 0);
		lost += WEXITSTATUS(st) == 1;
	}
	printf("size %zu (fresh process per try): child lost the parent's data in %d/%d forks\n", size, lost, n);
	return 0;
}
