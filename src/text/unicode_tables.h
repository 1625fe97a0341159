/*
 * Per-code-point properties for the WordPiece tokenizer (src/text/wordpiece.c),
 * generated into unicode_tables.c by test/tools/gen_unicode_tables.py from
 * tokenizers 0.23.3's own Unicode data (the script says which versions).
 * Internal to src/text/; not installed.
 */
#ifndef TB_TEXT_UNICODE_TABLES_H
#define TB_TEXT_UNICODE_TABLES_H

#include <stdint.h>

/* Flags of a code point (tb_uprop.flags). */
enum {
    TB_UP_DROP = 1,   /* removed by the cleaning step (controls, formats, private use, NUL, U+FFFD) */
    TB_UP_SPACE = 2,  /* whitespace: becomes a space (a word boundary) */
    TB_UP_PUNCT = 4,  /* punctuation: a word of its own */
    TB_UP_CJK = 8,    /* CJK ideograph: surrounded by spaces (tokenize_chinese_chars) */
    TB_UP_BREAK = 16, /* its NFD holds a starter: ends a run of reorderable marks */
    TB_UP_STRIP = 32, /* accent stripping maps it to useq[strip_off .. + strip_len) */
    TB_UP_LOWER = 64, /* lower-casing maps it to useq[lower_off .. + lower_len) */
    TB_UP_HANGUL = 128 /* a precomposed Hangul syllable: NFD is arithmetic (L V [T] jamo) */
};

/* One record; code points share records (tb_uprops is indexed by two stages). */
typedef struct tb_uprop {
    uint8_t flags;      /* TB_UP_* */
    uint8_t ccc;        /* canonical combining class as tokenizers' NFD sees it, for the marks that survive stripping; else 0 */
    uint16_t strip_off; /* NFD without Mn marks (valid with TB_UP_STRIP; length 0: removed) */
    uint8_t strip_len;
    uint16_t lower_off; /* full lower-case mapping (valid with TB_UP_LOWER) */
    uint8_t lower_len;
} tb_uprop;

extern const tb_uprop tb_uprops[];
extern const uint32_t tb_useq[];
extern const uint16_t tb_ustage1[]; /* 0x110000 / 128 entries: block of each 128 code points */
extern const uint16_t tb_ustage2[]; /* blocks of 128 record indices */

/* The record of code point cp (< 0x110000). */
static inline const tb_uprop *tb_uprop_of(uint32_t cp)
{
    return &tb_uprops[tb_ustage2[((uint32_t)tb_ustage1[cp >> 7] << 7) | (cp & 127u)]];
}

#endif /* TB_TEXT_UNICODE_TABLES_H */
