// SPDX-License-Identifier: Apache-2.0
/*
 * sennet-early-attach: count from early boot, before the agent's Python has started.
 *
 * The agent, once it has attached, writes a plan of what it loaded and where (root's
 * zone of the state partition). At the next boot rc.boot runs this program with that
 * plan: it loads the same object with the same map sizes and tunables, pins the maps
 * where the agent pins them and everything else (programs, the unpinned maps) under
 * PIN_DIR/early, gives each interface its counter slot and attaches the TC filters at
 * the agent's priority and handle. The agent then adopts the pinned programs and maps
 * instead of loading its own (python/sennet/agent/datapath/early.py), so what was
 * counted meanwhile stays counted. The plan carries every name and size, so the Python
 * layout stays the one place they are defined.
 *
 *   sennet-early-attach PLAN OBJECT APPLIED [IMAGE_DIGEST]
 *
 * OBJECT must be the plan's `object` and IMAGE_DIGEST (when given) its `image_digest`:
 * a plan made by another image or for another object is not followed. APPLIED receives
 * the plan as applied plus `result.*` lines, written last: the agent adopts only when it
 * exists. Exit status: 0 attached; 1 the kernel or libbpf refused (logged, nothing left
 * attached or pinned); 2 a bad plan or arguments; 3 nothing to do (a plan for another
 * image or object, or pins already there: the agent ran this boot).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#define TAG "sennet-early-attach: "
#define MAX_LIST 64
#define PLAN_MAX 16384
#define BPF_FS_MAGIC 0xcafe4a11

struct sized { char name[64]; unsigned long value; };

struct plan {
	char image_digest[128];
	char object[PATH_MAX];
	char pin_dir[PATH_MAX];
	char pin[MAX_LIST][64]; int n_pin;
	struct sized max_entries[MAX_LIST]; int n_max;
	struct sized tunable[MAX_LIST]; int n_tunable;
	char skip_program[MAX_LIST][64]; int n_skip;
	char ingress[64], egress[64], slot_map[64];
	unsigned long tc_priority, tc_handle;
	char iface[MAX_LIST][IF_NAMESIZE]; int n_iface;
};

static char text[PLAN_MAX + 1];

static void say(const char *fmt, ...)
{
	va_list ap;
	FILE *f = fopen("/proc/uptime", "r");
	double up = 0;
	if (f) {
		if (fscanf(f, "%lf", &up) != 1)
			up = 0;
		fclose(f);
	}
	fputs(TAG, stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf(" uptime=%.2f\n", up);
	fflush(stdout);
}

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	fputs(TAG, stderr);
	return vfprintf(stderr, fmt, ap);
}

/* A name as the object spells it: letters, digits, '_' (what C identifiers allow). */
static int ident(const char *s)
{
	if (!*s || strlen(s) >= 64)
		return 0;
	for (; *s; s++)
		if (!(*s == '_' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9')))
			return 0;
	return 1;
}

static int ifname_ok(const char *s)
{
	if (!*s || strlen(s) >= IF_NAMESIZE)
		return 0;
	for (; *s; s++)
		if (!(*s == '_' || *s == '-' || *s == '.' || (*s >= 'a' && *s <= 'z') ||
		      (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')))
			return 0;
	return 1;
}

static int number(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	if (*s < '0' || *s > '9')
		return 0;
	errno = 0;
	*out = strtoul(s, &end, 10);
	return !errno && !*end && *out <= max;
}

/* NAME:NUMBER */
static int sized(const char *v, unsigned long max, struct sized *out)
{
	const char *colon = strchr(v, ':');
	if (!colon || (size_t)(colon - v) >= sizeof(out->name))
		return 0;
	memcpy(out->name, v, colon - v);
	out->name[colon - v] = 0;
	return ident(out->name) && number(colon + 1, max, &out->value);
}

static int copy(char *dst, size_t size, const char *v)
{
	if (strlen(v) >= size)
		return 0;
	strcpy(dst, v);
	return 1;
}

static int parse_line(struct plan *p, char *key, char *v)
{
	if (!strcmp(key, "format"))
		return !strcmp(v, "1");
	if (!strcmp(key, "image_digest"))
		return copy(p->image_digest, sizeof(p->image_digest), v);
	if (!strcmp(key, "object"))
		return v[0] == '/' && copy(p->object, sizeof(p->object), v);
	if (!strcmp(key, "pin_dir"))
		return v[0] == '/' && !strstr(v, "..") && copy(p->pin_dir, sizeof(p->pin_dir), v);
	if (!strcmp(key, "pin"))
		return p->n_pin < MAX_LIST && ident(v) && copy(p->pin[p->n_pin++], 64, v);
	if (!strcmp(key, "max_entries"))
		return p->n_max < MAX_LIST && sized(v, 1UL << 31, &p->max_entries[p->n_max++]);
	if (!strcmp(key, "tunable"))
		return p->n_tunable < MAX_LIST && sized(v, 0xffffffffUL, &p->tunable[p->n_tunable++]);
	if (!strcmp(key, "skip_program"))
		return p->n_skip < MAX_LIST && ident(v) && copy(p->skip_program[p->n_skip++], 64, v);
	if (!strcmp(key, "ingress"))
		return ident(v) && copy(p->ingress, 64, v);
	if (!strcmp(key, "egress"))
		return ident(v) && copy(p->egress, 64, v);
	if (!strcmp(key, "slot_map"))
		return ident(v) && copy(p->slot_map, 64, v);
	if (!strcmp(key, "tc_priority"))
		return number(v, 0xffff, &p->tc_priority) && p->tc_priority > 0;
	if (!strcmp(key, "tc_handle"))
		return number(v, 0xffffffffUL, &p->tc_handle) && p->tc_handle > 0;
	if (!strcmp(key, "interface"))
		return p->n_iface < MAX_LIST - 1 && ifname_ok(v) &&
		       copy(p->iface[p->n_iface++], IF_NAMESIZE, v);
	return 0;
}

/* The plan must be root's own regular file, writable by nobody else: at boot it decides
 * what root loads into the kernel. */
static int read_plan(const char *path, struct plan *p)
{
	struct stat st;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, TAG "cannot open plan %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022)) {
		fprintf(stderr, TAG "plan %s refused: not a root-owned regular file writable by root only\n",
			path);
		close(fd);
		return -1;
	}
	n = read(fd, text, PLAN_MAX + 1);
	close(fd);
	if (n < 0 || n > PLAN_MAX) {
		fprintf(stderr, TAG "plan %s: %s\n", path, n < 0 ? strerror(errno) : "larger than 16 KiB");
		return -1;
	}
	text[n] = 0;
	char *save = NULL, *copy_text = strdup(text);
	int lineno = 0;
	for (char *line = strtok_r(copy_text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		lineno++;
		if (line[0] == '#')
			continue;
		char *eq = strchr(line, '=');
		int ok = eq && (*eq = 0, parse_line(p, line, eq + 1));
		if (eq)
			*eq = '=';
		if (!ok) {
			fprintf(stderr, TAG "plan %s line %d: bad entry \"%s\"\n", path, lineno, line);
			free(copy_text);
			return -1;
		}
	}
	free(copy_text);
	if (!p->object[0] || !p->pin_dir[0] || !p->ingress[0] || !p->egress[0] || !p->slot_map[0] || !p->tc_priority ||
	    !p->tc_handle || !p->n_iface) {
		fprintf(stderr, TAG "plan %s lacks one of object, pin_dir, ingress, egress, slot_map, "
				"tc_priority, tc_handle, interface\n", path);
		return -1;
	}
	return 0;
}

static struct bpf_map *map_named(struct bpf_object *obj, const char *name)
{
	struct bpf_map *m = bpf_object__find_map_by_name(obj, name);
	if (!m)
		fprintf(stderr, TAG "the object has no map %s\n", name);
	return m;
}

/* `const volatile` globals in .rodata, found by name through the object's BTF. */
static int set_tunables(struct bpf_object *obj, const struct plan *p)
{
	struct bpf_map *m, *rodata = NULL;
	bpf_object__for_each_map(m, obj) {
		const char *name = bpf_map__name(m);
		size_t len = strlen(name);
		if (len >= 7 && !strcmp(name + len - 7, ".rodata"))
			rodata = m;
	}
	if (!p->n_tunable)
		return 0;
	struct btf *btf = bpf_object__btf(obj);
	int sec = btf ? btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC) : -1;
	size_t size = 0;
	const void *initial = rodata ? bpf_map__initial_value(rodata, &size) : NULL;
	char *base = initial ? malloc(size) : NULL;
	if (sec < 0 || !base) {
		fprintf(stderr, TAG "the object has no .rodata with BTF\n");
		return -1;
	}
	memcpy(base, initial, size);
	const struct btf_type *t = btf__type_by_id(btf, sec);
	for (int i = 0; i < p->n_tunable; i++) {
		const struct btf_var_secinfo *vs = btf_var_secinfos(t);
		int found = 0;
		for (int j = 0; j < btf_vlen(t); j++, vs++) {
			const struct btf_type *var = btf__type_by_id(btf, vs->type);
			if (strcmp(btf__name_by_offset(btf, var->name_off), p->tunable[i].name))
				continue;
			if (vs->size != 4 || vs->offset + 4 > size) {
				fprintf(stderr, TAG "tunable %s is not a 4-byte __u32\n", p->tunable[i].name);
				free(base);
				return -1;
			}
			__u32 v = (__u32)p->tunable[i].value;
			memcpy(base + vs->offset, &v, 4);
			found = 1;
		}
		if (!found) {
			fprintf(stderr, TAG "the object lacks tunable %s\n", p->tunable[i].name);
			free(base);
			return -1;
		}
	}
	int err = bpf_map__set_initial_value(rodata, base, size);
	free(base);
	return err;
}

static int configure(struct bpf_object *obj, const struct plan *p)
{
	char path[PATH_MAX];
	for (int i = 0; i < p->n_pin; i++) {
		struct bpf_map *m = map_named(obj, p->pin[i]);
		snprintf(path, sizeof(path), "%s/%s", p->pin_dir, p->pin[i]);
		if (!m || bpf_map__set_pin_path(m, path))
			return -1;
	}
	for (int i = 0; i < p->n_max; i++) {
		struct bpf_map *m = map_named(obj, p->max_entries[i].name);
		if (!m || bpf_map__set_max_entries(m, (__u32)p->max_entries[i].value))
			return -1;
	}
	for (int i = 0; i < p->n_skip; i++) {
		struct bpf_program *prog = bpf_object__find_program_by_name(obj, p->skip_program[i]);
		if (!prog || bpf_program__set_autoload(prog, false)) {
			fprintf(stderr, TAG "the object has no program %s\n", p->skip_program[i]);
			return -1;
		}
	}
	return set_tunables(obj, p);
}

/* Everything the agent needs and that is not pinned by the plan, under PIN_DIR/early. */
static int pin_rest(struct bpf_object *obj, const char *early)
{
	char path[PATH_MAX];
	struct bpf_map *m;
	struct bpf_program *prog;
	bpf_object__for_each_map(m, obj) {
		if (bpf_map__pin_path(m) || strchr(bpf_map__name(m), '.'))
			continue;
		snprintf(path, sizeof(path), "%s/%s", early, bpf_map__name(m));
		if (bpf_map__pin(m, path))
			return -1;
	}
	bpf_object__for_each_program(prog, obj) {
		if (!bpf_program__autoload(prog))
			continue;
		snprintf(path, sizeof(path), "%s/%s", early, bpf_program__name(prog));
		if (bpf_program__pin(prog, path))
			return -1;
	}
	return 0;
}

static int prog_fd(struct bpf_object *obj, const char *name)
{
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, name);
	if (!prog) {
		fprintf(stderr, TAG "the object has no program %s\n", name);
		return -1;
	}
	return bpf_program__fd(prog);
}

/* Egress first, as the agent does: a frame is never counted on one side only
 * because the other hook was not there yet in the other order. */
static const enum bpf_tc_attach_point POINTS[2] = {BPF_TC_EGRESS, BPF_TC_INGRESS};

/* `*hooks`: how many of POINTS now carry our filter (what a failure must take back). */
static int attach_one(const struct plan *p, int ifindex, int ingress, int egress, int *created,
		      int *hooks)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
			    .attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS);
	int err = bpf_tc_hook_create(&hook);
	*created = err == 0;
	if (err && err != -EEXIST)
		return err;
	int fds[2] = {egress, ingress};
	for (*hooks = 0; *hooks < 2; ++*hooks) {
		/* No BPF_TC_F_REPLACE: a filter already at our priority and handle is not ours. */
		DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = (__u32)p->tc_handle,
				    .priority = (__u32)p->tc_priority, .prog_fd = fds[*hooks]);
		hook.attach_point = POINTS[*hooks];
		err = bpf_tc_attach(&hook, &opts);
		if (err)
			return err;
	}
	return 0;
}

static void detach_one(const struct plan *p, int ifindex, int created, int hooks)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
			    .attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS);
	if (created) {
		bpf_tc_hook_destroy(&hook);
		return;
	}
	for (int i = 0; i < hooks; i++) {
		DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = (__u32)p->tc_handle,
				    .priority = (__u32)p->tc_priority);
		hook.attach_point = POINTS[i];
		bpf_tc_detach(&hook, &opts);
	}
}

static int write_applied(const char *path, const char *results)
{
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	size_t a = strlen(text), b = strlen(results);
	int ok = write(fd, text, a) == (ssize_t)a && write(fd, results, b) == (ssize_t)b;
	ok = !close(fd) && ok;
	if (!ok || rename(tmp, path)) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

static void unpin_all(struct bpf_object *obj, const char *early)
{
	struct bpf_map *m;
	struct bpf_program *prog;
	char path[PATH_MAX];
	bpf_object__for_each_map(m, obj)
		if (bpf_map__is_pinned(m))
			bpf_map__unpin(m, NULL);
	bpf_object__for_each_program(prog, obj) {
		snprintf(path, sizeof(path), "%s/%s", early, bpf_program__name(prog));
		unlink(path);
	}
	rmdir(early);
}

int main(int argc, char **argv)
{
	static struct plan p;
	char early[PATH_MAX], results[MAX_LIST * 96] = "";
	int ifindex[MAX_LIST] = {0}, created[MAX_LIST] = {0}, hooks[MAX_LIST] = {0}, status = 1;

	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: sennet-early-attach PLAN OBJECT APPLIED [IMAGE_DIGEST]\n");
		return 2;
	}
	if (read_plan(argv[1], &p))
		return 2;
	if (argc == 5 && strcmp(p.image_digest, argv[4])) {
		say("event=early_attach_skipped why=plan_for_another_image");
		return 3;
	}
	/* The agent adopts only what it would have loaded itself: its own object file. */
	if (strcmp(p.object, argv[2])) {
		say("event=early_attach_skipped why=plan_for_another_object object=%s", p.object);
		return 3;
	}
	snprintf(early, sizeof(early), "%s/early", p.pin_dir);
	/* Pins live on a bpf filesystem only: anything else would be a plain directory. */
	char parent[PATH_MAX];
	struct statfs fs;
	snprintf(parent, sizeof(parent), "%s", p.pin_dir);
	*strrchr(parent, '/') = 0;
	if (statfs(parent[0] ? parent : "/", &fs) || fs.f_type != BPF_FS_MAGIC) {
		fprintf(stderr, TAG "pin_dir %s is not on a bpf filesystem\n", p.pin_dir);
		return 2;
	}
	if (mkdir(p.pin_dir, 0700) && errno != EEXIST) {
		fprintf(stderr, TAG "cannot create %s: %s\n", p.pin_dir, strerror(errno));
		return 1;
	}
	if (mkdir(early, 0700)) {
		if (errno == EEXIST) {
			say("event=early_attach_skipped why=pins_exist pin_dir=%s", p.pin_dir);
			return 3;
		}
		fprintf(stderr, TAG "cannot create %s: %s\n", early, strerror(errno));
		return 1;
	}
	for (int i = 0; i < p.n_pin; i++) {
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", p.pin_dir, p.pin[i]);
		if (!access(path, F_OK)) {
			rmdir(early);
			say("event=early_attach_skipped why=pins_exist pin_dir=%s", p.pin_dir);
			return 3;
		}
	}
	libbpf_set_print(libbpf_print);
	struct bpf_object *obj = bpf_object__open_file(argv[2], NULL);
	if (!obj) {
		fprintf(stderr, TAG "cannot open %s: %s\n", argv[2], strerror(errno));
		rmdir(early);
		return 1;
	}
	if (configure(obj, &p) || bpf_object__load(obj)) {
		fprintf(stderr, TAG "loading %s failed\n", argv[2]);
		goto out;
	}
	if (pin_rest(obj, early))
		goto out;
	say("event=early_bpf_loaded object=%s", argv[2]);
	int ingress = prog_fd(obj, p.ingress), egress = prog_fd(obj, p.egress);
	struct bpf_map *slots = map_named(obj, p.slot_map);
	if (ingress < 0 || egress < 0 || !slots)
		goto out;
	char names[MAX_LIST * IF_NAMESIZE] = "";
	for (int i = 0, slot = 1; i < p.n_iface; i++) {
		__u32 idx = if_nametoindex(p.iface[i]), s = (__u32)slot;
		if (!idx) {
			say("event=early_attach_waiting ifname=%s note=the_agent_attaches_it_when_it_appears",
			    p.iface[i]);
			continue;
		}
		if (bpf_map_update_elem(bpf_map__fd(slots), &idx, &s, BPF_ANY)) {
			fprintf(stderr, TAG "slot for %s: %s\n", p.iface[i], strerror(errno));
			goto out;
		}
		int err = attach_one(&p, (int)idx, ingress, egress, &created[i], &hooks[i]);
		ifindex[i] = (int)idx;
		if (err) {
			fprintf(stderr, TAG "attaching to %s: %s\n", p.iface[i], strerror(-err));
			goto out;
		}
		size_t used = strlen(results);
		snprintf(results + used, sizeof(results) - used, "result.attached=%s:%u:%d:%d\n",
			 p.iface[i], idx, slot, created[i]);
		strcat(names, names[0] ? "," : "");
		strcat(names, p.iface[i]);
		slot++;
	}
	if (write_applied(argv[3], results)) {
		fprintf(stderr, TAG "cannot write %s: %s\n", argv[3], strerror(errno));
		goto out;
	}
	say("event=early_counting interfaces=%s", names);
	status = 0;
out:
	if (status) {
		for (int i = 0; i < p.n_iface; i++)
			if (ifindex[i])
				detach_one(&p, ifindex[i], created[i], hooks[i]);
		unpin_all(obj, early);
		say("event=early_attach_failed note=the_agent_loads_its_own");
	}
	bpf_object__close(obj);
	return status;
}
