/*
 * Input format of fuzz/fuzz_mutate.c, shared with fuzz/make-seeds.c.
 *
 * An input is a program: a sequence of steps, each an opcode byte (taken
 * modulo FM_OP_COUNT) and its arguments.  FM_OP_SCRIBBLE takes 12 argument
 * bytes: area (u8), offset (u16 little-endian, modulo the area's length),
 * how (u8) and value (u64 little-endian).  Every other opcode takes 2: a
 * selector `a` and a size/key byte `b`.  Missing trailing bytes read as 0.
 *
 * Selector bits: bit 0 picks ring r0 or r1, bit 1 the handle set (the
 * long-lived primary region or the secondary one reopened per input), bit 2
 * an op-specific variant (see fuzz_mutate.c).
 */
#ifndef MMIPC_FUZZ_MUTATE_OPS_H
#define MMIPC_FUZZ_MUTATE_OPS_H

enum fm_op {
    FM_OP_SCRIBBLE,
    FM_OP_SEND,
    FM_OP_RECV,
    FM_OP_PEEK,
    FM_OP_RELEASE,
    FM_OP_RESERVE,
    FM_OP_COMMIT,
    FM_OP_RING_STAT,
    FM_OP_KV_PUT,
    FM_OP_KV_GET,
    FM_OP_KV_DEL,
    FM_OP_KV_CAS,
    FM_OP_KV_WAIT,
    FM_OP_KV_FOREACH,
    FM_OP_KV_STAT,
    FM_OP_INSPECT,
    FM_OP_REOPEN,
    FM_OP_RDONLY,
    FM_OP_CREATE,
    FM_OP_SAVED,
    FM_OP_COUNT
};

/* Scribble areas (argument 1 of FM_OP_SCRIBBLE, modulo FM_AREA_COUNT). */
enum fm_area {
    FM_AREA_HEADER, /* page 0 */
    FM_AREA_DIR,    /* directory entries */
    FM_AREA_LEASES, /* the first lease slots (those in use) */
    FM_AREA_RING0,  /* ring r0: its 512-byte header */
    FM_AREA_RING0_DATA,
    FM_AREA_RING1,
    FM_AREA_RING1_DATA,
    FM_AREA_KV, /* kv table: its 256-byte header */
    FM_AREA_KV_SLOTS,
    FM_AREA_ANY, /* the whole file */
    FM_AREA_COUNT
};

/* how: bits 0-1 width (1, 2, 4, 8 bytes); bits 2-4 mode; bit 5 unaligned. */
enum fm_mode {
    FM_SET,   /* store value */
    FM_ADD,   /* add (int8_t)value to what is there */
    FM_XOR,   /* xor value in */
    FM_ZERO,  /* store 0 */
    FM_ONES,  /* store all ones */
    FM_SIZE,  /* store the file size */
    FM_SMALL, /* store value % 4096 */
    FM_MODE_COUNT
};

#define FM_HOW(width_log2, mode, unaligned)                                                                            \
    ((unsigned)(width_log2) | ((unsigned)(mode) << 2) | ((unsigned)(unaligned) << 5))

#endif
