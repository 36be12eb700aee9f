/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * One C source, two loaders.
 *
 * The appliance compiles sennet_tc.bpf.c ahead of time with clang and loads it
 * through libbpf (BTF-style maps, `const volatile` tunables in .rodata). A
 * developer host can instead let bcc compile the very same file at run time;
 * bcc has its own map macros and method-call syntax, and it learns tunables
 * and pin paths from -D flags. This header is the only place the two dialects
 * differ, so the program logic is written once.
 *
 * Map *declarations* bridge here as macros. Map *method calls* cannot: bcc
 * rewrites `map.lookup()` only where it is written literally in the program
 * source, so each program file keeps a short block of accessors with one
 * branch per dialect.
 *
 * bcc build: the loader passes -DSENNET_BCC and
 *   -DSENNET_PIN_DIR="\"/sys/fs/bpf/sennet\""  (where maps are pinned)
 *   -DSENNET_RINGBUF_PAGES=N                   (ring size in pages)
 *   -Dcfg_<name>=VALUE                         (each tunable)
 */
#ifndef SENNET_COMPAT_H
#define SENNET_COMPAT_H

#define SENNET_TC_ACT_UNSPEC (-1)
#define SENNET_F_MMAPABLE (1U << 10) /* BPF_F_MMAPABLE, spelled out for both header sets */

#ifdef SENNET_BCC
/* ------------------------------------------------------------------ bcc */
/* bcc includes <uapi/linux/bpf.h> and its helpers itself. */
#define SEC(name)
#define SENNET_LICENSE struct sennet_bcc_sets_the_license /* bcc declares GPL itself */

#define SENNET_TUNABLE(type, name, dflt) struct sennet_tunable_##name /* value: -D name=... */

#define SENNET_PERCPU_ARRAY(name, key_t, val_t, n) \
	BPF_TABLE_PINNED("percpu_array", key_t, val_t, name, n, SENNET_PIN_DIR "/" #name)
#define SENNET_MMAP_ARRAY(name, key_t, val_t, n) \
	BPF_TABLE_PINNED7("array", key_t, val_t, name, n, SENNET_PIN_DIR "/" #name, SENNET_F_MMAPABLE)
#define SENNET_RINGBUF(name) BPF_RINGBUF_OUTPUT(name, SENNET_RINGBUF_PAGES)
#define SENNET_LRU_HASH(name, key_t, val_t, n) \
	BPF_TABLE_PINNED("lru_hash", key_t, val_t, name, n, SENNET_PIN_DIR "/" #name)
#define SENNET_SCRATCH(name, val_t) BPF_PERCPU_ARRAY(name, val_t, 1)

#else
/* --------------------------------------------------------------- libbpf */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define SENNET_LICENSE char LICENSE[] SEC("license") = "GPL"

/* Read-only data, written by the loader between open and load: the verifier
 * then sees constants, and no recompile is needed to change them. */
#define SENNET_TUNABLE(type, name, dflt) const volatile type name = dflt;

#define SENNET_PERCPU_ARRAY(name, key_t, val_t, n) \
	struct { \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); \
		__uint(max_entries, n); \
		__type(key, key_t); \
		__type(value, val_t); \
	} name SEC(".maps")
/* An array user space can mmap (read in one go, no syscall per entry). */
#define SENNET_MMAP_ARRAY(name, key_t, val_t, n) \
	struct { \
		__uint(type, BPF_MAP_TYPE_ARRAY); \
		__uint(max_entries, n); \
		__uint(map_flags, SENNET_F_MMAPABLE); \
		__type(key, key_t); \
		__type(value, val_t); \
	} name SEC(".maps")
/* A hash that forgets its least recently used entry when full (pinned by the loader). */
#define SENNET_LRU_HASH(name, key_t, val_t, n) \
	struct { \
		__uint(type, BPF_MAP_TYPE_LRU_HASH); \
		__uint(max_entries, n); \
		__type(key, key_t); \
		__type(value, val_t); \
	} name SEC(".maps")
/* One per-CPU value of working memory, for what is too big for the 512-byte
 * stack (never pinned: it holds nothing between packets). */
#define SENNET_SCRATCH(name, val_t) \
	struct { \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); \
		__uint(max_entries, 1); \
		__type(key, __u32); \
		__type(value, val_t); \
	} name SEC(".maps")
/* Size is a placeholder: the loader sets max_entries before load. */
#define SENNET_RINGBUF(name) \
	struct { \
		__uint(type, BPF_MAP_TYPE_RINGBUF); \
		__uint(max_entries, 256 * 1024); \
	} name SEC(".maps")
#endif

#endif /* SENNET_COMPAT_H */
