# libtblocks -- build, test, install.  `make help` lists the targets.
#
# Variables users may set: CC, CFLAGS_OPT, EXTRA_CFLAGS, EXTRA_LDFLAGS, PREFIX,
# DESTDIR, WERROR (empty to allow warnings), BUILD (object directory).

CC        ?= cc
CXX       ?= c++
PYTHON    ?= python3
PREFIX    ?= /usr/local
LIBDIR_INSTALL ?= $(PREFIX)/lib
INCDIR_INSTALL ?= $(PREFIX)/include
BUILD     ?= build
LIBOUT    ?= lib
WERROR    ?= -Werror
CFLAGS_OPT ?= -O2 -g

# The version comes from include/tblocks/version.h and nowhere else.
VERSION := $(shell sed -n 's/^\#define TB_VERSION_MAJOR \([0-9]*\).*/\1/p' include/tblocks/version.h).$(shell sed -n 's/^\#define TB_VERSION_MINOR \([0-9]*\).*/\1/p' include/tblocks/version.h).$(shell sed -n 's/^\#define TB_VERSION_PATCH \([0-9]*\).*/\1/p' include/tblocks/version.h)

WARN      := -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes $(WERROR)
CFLAGS_ALL := -std=c11 $(CFLAGS_OPT) -fopenmp -fPIC $(WARN) -Iinclude $(EXTRA_CFLAGS)
LDLIBS_ALL := -fopenmp -lm $(EXTRA_LDFLAGS)
DEPFLAGS  = -MMD -MP

LIB       := $(LIBOUT)/libtblocks.a
# One directory per layer, lowest first (docs/conventions.md, "Layout"): a
# source includes only its own layer's internal headers and those below.
LIB_DIRS  := core kernels blocks train sample text io
LIB_SRC   := $(sort $(foreach d,$(LIB_DIRS),$(wildcard src/$(d)/*.c)))
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)

# Each example is examples/<name>/*.c plus the shared wiring in examples/common.
EXAMPLES     := $(notdir $(patsubst %/,%,$(filter-out examples/common/,$(sort $(dir $(wildcard examples/*/*.c))))))
EXAMPLE_COMMON_SRC := $(wildcard examples/common/*.c)
EXAMPLE_COMMON_OBJ := $(EXAMPLE_COMMON_SRC:%.c=$(BUILD)/%.o)
EXAMPLE_BINS := $(EXAMPLES:%=$(BUILD)/bin/%)

CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lrt -lpthread)
TEST_SRC  := $(sort $(wildcard test/unit/*.c))
# The unit tests also test the examples' shared model wiring (test_gpt.c);
# GPT_OBJ is that wiring with the strict number parsing it reads files with.
GPT_SRC   := examples/common/gpt.c examples/common/tfm.c examples/common/ex_arena.c \
             examples/common/ex_text.c examples/common/tfm_lora.c \
             examples/common/ptuning_input.c examples/common/prefix_tuning.c \
             examples/common/bert_cls.c examples/common/bert_config.c \
             examples/common/bert_mlm.c examples/common/bert_ckpt.c examples/common/bert_mask.c \
             examples/common/bert_model.c examples/common/ex_json.c examples/common/ex_file.c \
             examples/common/clip_model.c examples/common/ex_png.c
GPT_OBJ   := $(GPT_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ  := $(TEST_SRC:%.c=$(BUILD)/%.o) $(GPT_OBJ)
TEST_BIN  := $(BUILD)/test/unit_tests
ORACLE_DIR := $(BUILD)/oracle
# The whole suite (unit, oracle, example runs, script tests and the
# sanitizer pass) runs once per kernel family, forced with the library's
# own switch TB_KERNEL, so an AVX-512 machine exercises the AVX2 and
# portable paths exactly as an AVX2-only machine would. A family the CPU
# lacks is reported by name as NOT RUN (test/scripts/per_family.sh).
TEST_KERNELS ?= portable avx2 avx512
# The tool that says whether this CPU runs a family: always the plain build
# (a sanitizer report in it must not read as "family not supported").
FAMILY_TOOL ?= $(BUILD)/test/kernel_family
PER_FAMILY  := sh test/scripts/per_family.sh "$(TEST_KERNELS)" $(FAMILY_TOOL)
ORACLE_STAMP := $(ORACLE_DIR)/.stamp
# One generator per block (and per reference model); tbref.py is the code
# they share (the writer): not a generator, but a change to it regenerates.
ORACLE_PY := $(sort $(wildcard test/oracle/gen_*.py))
ORACLE_LIB := test/oracle/tbref.py

# Every test/bench/*.c but the shared harness is a benchmark program; the
# harness is compiled once and linked into each of them.
BENCH_HARNESS := test/bench/harness.c
BENCH_SRC := $(sort $(filter-out $(BENCH_HARNESS),$(wildcard test/bench/*.c)))
BENCH_BINS := $(BENCH_SRC:test/bench/%.c=$(BUILD)/bench/%)
BENCH_HARNESS_OBJ := $(BUILD)/test/bench/harness.o
# The MPI collectives benchmark (built with MPI only; run by test/bench/dp.sh).
BENCH_COMM := $(BUILD)/bench/mpi/bench_comm
BENCH_CFLAGS := -Isrc -O3 -march=native -ffp-contract=fast
BENCH_LIBS := -Wl,--as-needed
# Optional libraries the benchmarks compare against, detected here; what is
# missing is skipped (`make bench BENCH_DNNL= BENCH_OPENBLAS=` skips both).
ifeq ($(origin BENCH_DNNL),undefined)
BENCH_DNNL := $(if $(wildcard /usr/include/dnnl.h /usr/local/include/dnnl.h),yes)
endif
ifeq ($(origin BENCH_OPENBLAS),undefined)
BENCH_OPENBLAS := $(or $(shell pkg-config --exists openblas 2>/dev/null && echo pc),\
                    $(if $(wildcard /usr/include/cblas.h /usr/include/*/cblas.h),$(if \
                    $(wildcard /usr/lib/libopenblas.so /usr/lib/*/libopenblas.so /usr/lib64/libopenblas.so),yes)))
endif
ifneq ($(BENCH_DNNL),)
BENCH_CFLAGS += -DHAVE_DNNL
BENCH_LIBS += -ldnnl
endif
ifeq ($(BENCH_OPENBLAS),pc)
BENCH_CFLAGS += -DHAVE_OPENBLAS $(patsubst -I%,-isystem %,$(shell pkg-config --cflags openblas))
BENCH_LIBS += $(shell pkg-config --libs openblas)
else ifneq ($(BENCH_OPENBLAS),)
BENCH_CFLAGS += -DHAVE_OPENBLAS
BENCH_LIBS += -lopenblas
endif
BENCH_SKIPPED := $(if $(BENCH_DNNL),,oneDNN (no dnnl.h)) $(if $(BENCH_OPENBLAS),,OpenBLAS (no openblas cblas.h/libopenblas))
# Benchmarks are rebuilt when the detection result changes.
BENCH_STAMP := $(BUILD)/bench/.flags
$(shell mkdir -p $(BUILD)/bench && (echo '$(BENCH_CFLAGS) | $(BENCH_LIBS)' | cmp -s - $(BENCH_STAMP) || \
        echo '$(BENCH_CFLAGS) | $(BENCH_LIBS)' > $(BENCH_STAMP)))

SANITIZE_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
# The sanitizer build is also the debug build (TB_DEBUG): tb_gemm_serial
# checks that no pack or kernel wrote past the scratch it was handed.
DEBUG_FLAGS    := -DTB_DEBUG
SANITIZE_ENV   := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
                  LSAN_OPTIONS=suppressions=$(CURDIR)/test/lsan.supp:print_suppressions=0

.PHONY: all lib examples mpi check deps test test-build test-unit test-scripts sanitize \
        sanitize-build fuzz fuzz-build fuzz-seeds bench bench-dp docs demo guide guide-fast correctness \
        install uninstall clean help

all: lib examples mpi

# ---- MPI (optional) ---------------------------------------------------------
# libtblocks_mpi.a (include/tblocks_mpi.h, mpi/*.c: comm.h's communicator
# over MPI) and, for each example in MPI_EXAMPLES, build/bin/<name>_mpi (its
# sources built with EX_MPI, plus examples/common/mpi/ex_mpi.c: the MPI
# start-up of examples/common/ex_mpi.h) are built only when the MPI compiler
# wrapper MPICC is found; its compile and link flags are taken from it (Open
# MPI's --showme, MPICH's -compile-info style wrappers are used as the
# compiler otherwise). Without it `make all` says so and builds the rest.
MPICC     ?= mpicc
HAVE_MPI  := $(shell command -v $(MPICC) 2>/dev/null)
MPI_LIB   := $(LIBOUT)/libtblocks_mpi.a
MPI_SRC   := $(sort $(wildcard mpi/*.c))
MPI_OBJ   := $(MPI_SRC:%.c=$(BUILD)/%.o)
MPI_EXAMPLES     := gpt bert_classify
MPI_EXAMPLE_BINS := $(MPI_EXAMPLES:%=$(BUILD)/bin/%_mpi)
EX_MPI_OBJ       := $(BUILD)/examples/common/mpi/ex_mpi.o
ifneq ($(HAVE_MPI),)
MPI_CFLAGS := $(patsubst -I%,-isystem %,$(shell $(MPICC) --showme:compile 2>/dev/null))
MPI_LIBS   := $(shell $(MPICC) --showme:link 2>/dev/null)
MPI_CC     := $(if $(MPI_LIBS),$(CC),$(MPICC))
mpi: $(MPI_LIB) $(MPI_EXAMPLE_BINS)
else
mpi:
	@echo "make: MPI compiler wrapper '$(MPICC)' not found: libtblocks_mpi.a and $(notdir $(MPI_EXAMPLE_BINS)) not built"
endif

$(MPI_LIB): $(MPI_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/mpi/%.o: mpi/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(MPI_CC) $(CFLAGS_ALL) $(MPI_CFLAGS) $(DEPFLAGS) -c $< -o $@

$(BUILD)/examples/common/mpi/%.o: examples/common/mpi/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(MPI_CC) $(CFLAGS_ALL) $(MPI_CFLAGS) -DEX_MPI -Iexamples/common $(DEPFLAGS) -c $< -o $@

# examples/<name>/<file>.c -> build/examples/<name>/<file>_mpi.o
$(BUILD)/examples/%_mpi.o: examples/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(MPI_CC) $(CFLAGS_ALL) $(MPI_CFLAGS) -DEX_MPI -Iexamples/common $(DEPFLAGS) -c $< -o $@

define MPI_EXAMPLE_RULE
$(BUILD)/bin/$(1)_mpi: $(patsubst examples/%.c,$(BUILD)/examples/%_mpi.o,$(wildcard examples/$(1)/*.c)) \
    $(EX_MPI_OBJ) $(EXAMPLE_COMMON_OBJ) $(MPI_LIB) $(LIB)
	@mkdir -p $$(dir $$@)
	$$(MPI_CC) $$(CFLAGS_ALL) -o $$@ $$(filter %.o,$$^) $$(MPI_LIB) $$(LIB) $$(MPI_LIBS) $$(LDLIBS_ALL)
endef
$(foreach e,$(MPI_EXAMPLES),$(eval $(call MPI_EXAMPLE_RULE,$(e))))

lib: $(LIB)

examples: $(EXAMPLE_BINS)

help:
	@echo "make [all]      build lib/libtblocks.a and the examples"
	@echo "make demo       build and run the main example"
	@echo "make check      install missing test dependencies, then run every test"
	@echo "make test       run every test without installing anything"
	@echo "make sanitize   the unit and oracle tests under ASan+UBSan"
	@echo "make bench      benchmarks (ratios to measured machine peaks; with MPI, bench-dp too)"
	@echo "make bench-dp   data-parallel step times, bytes per step, collective bandwidth (MPI)"
	@echo "make docs       Doxygen HTML in build/docs (warnings fail)"
	@echo "make guide      re-run docs/guide/'s demonstrations, rewrite their outputs (guide-fast: check only)"
	@echo "make correctness  run the unit tests in one family, rewrite docs/correctness.md's figures"
	@echo "make install    install into \$$(DESTDIR)\$$(PREFIX) (default /usr/local)"
	@echo "make uninstall  remove what install put there"
	@echo "make clean      remove build outputs"

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

# Objects depend on the compiler and flags they were built with, so that
# `make CC=clang ...` after a gcc build rebuilds instead of mixing the two.
FLAGS_STAMP := $(BUILD)/.flags
FLAGS_LINE  := $(CC) $(CFLAGS_ALL) | $(CHECK_CFLAGS)
# Rewritten (at parse time) only when the line changes.
$(shell mkdir -p $(BUILD) && (echo '$(FLAGS_LINE)' | cmp -s - $(FLAGS_STAMP) || \
        echo '$(FLAGS_LINE)' > $(FLAGS_STAMP)))

$(BUILD)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(KERNEL_FLAGS) $(DEPFLAGS) -c $< -o $@

# Micro-kernels: compiled for their instruction set (and only called after
# run-time CPU detection), at -O3, never contracting a*b+c into an FMA the
# source did not ask for (edge and full tiles must round identically).
ifneq ($(filter x86_64%,$(shell $(CC) -dumpmachine)),)
$(BUILD)/src/kernels/gemm_avx2.o: KERNEL_FLAGS = -O3 -mavx2 -mfma -ffp-contract=off
$(BUILD)/src/kernels/gemm_avx512.o: KERNEL_FLAGS = -O3 -mavx512f -mfma -ffp-contract=off
$(BUILD)/src/kernels/vexp_avx512.o: KERNEL_FLAGS = -O3 -mavx512f -ffp-contract=off
$(BUILD)/src/kernels/vexp_avx2.o: KERNEL_FLAGS = -O3 -mavx2 -ffp-contract=off
endif
$(BUILD)/src/kernels/gemm_portable.o: KERNEL_FLAGS = -O3 -ffp-contract=off
# The tests' second build of the portable kernel (its plain-loop variant)
# with the same flags, or it would not be the same arithmetic.
$(BUILD)/test/unit/gemm_portable_plain.o: KERNEL_FLAGS = -O3 -ffp-contract=off
$(BUILD)/src/kernels/gemm.o: KERNEL_FLAGS = -O3 -ffp-contract=off
# Row and column reductions of the normalization blocks, attention's
# tile loops and the contrastive loss's row products: -O3 to vectorise.
$(BUILD)/src/blocks/norm_common.o $(BUILD)/src/blocks/batchnorm.o \
$(BUILD)/src/blocks/attention.o $(BUILD)/src/blocks/contrastive.o: KERNEL_FLAGS = -O3
# The checkpoint loader's scan for NaN and infinities: -O3 to vectorise
# (a read at memory speed instead of a fifth of it).
$(BUILD)/src/io/checkpoint.o: KERNEL_FLAGS = -O3
# Adam's step and its overflow guard: -O3 to vectorise, -fno-math-errno so
# that sqrtf is one instruction the vectoriser can widen (src/train/optim.c;
# the same bits: IEEE sqrt is correctly rounded either way).
$(BUILD)/src/train/optim.o: KERNEL_FLAGS = -O3 -fno-math-errno

$(BUILD)/examples/common/%.o: examples/common/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Iexamples/common $(DEPFLAGS) -c $< -o $@

# Example binaries: every .c in examples/<name>/ plus examples/common.
.SECONDEXPANSION:
.SECONDARY: $(patsubst %.c,$(BUILD)/%.o,$(wildcard examples/*/*.c))
$(BUILD)/bin/%: $$(addprefix $(BUILD)/,$$(subst .c,.o,$$(wildcard examples/$$*/*.c))) $(EXAMPLE_COMMON_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -o $@ $(filter %.o,$^) $(LIB) $(LDLIBS_ALL)

$(BUILD)/examples/%.o: examples/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Iexamples/common $(DEPFLAGS) -c $< -o $@

# ---- tests -----------------------------------------------------------------

$(BUILD)/test/unit/%.o: test/unit/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(KERNEL_FLAGS) -Isrc -Iexamples/common $(CHECK_CFLAGS) $(DEPFLAGS) -c $< -o $@

$(TEST_BIN): $(TEST_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -o $@ $(TEST_OBJ) $(LIB) $(CHECK_LIBS) $(LDLIBS_ALL)

$(BUILD)/test/kernel_family: test/tools/kernel_family.c $(LIB) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(LIB) $(LDLIBS_ALL)

# PyTorch reference data for the oracle tests (regenerated when a script changes).
# The generators are independent (each writes its own cases and manifest)
# and each runs PyTorch on one thread, so ORACLE_JOBS of them run at once
# (default: the online CPUs); any failure fails the target.
ORACLE_JOBS ?= $(JOBS)
$(ORACLE_STAMP): $(ORACLE_PY) $(ORACLE_LIB)
	@mkdir -p $(ORACLE_DIR)
	@printf '%s\n' $(ORACLE_PY) | xargs -P $(ORACLE_JOBS) -I{} sh -c \
	    'echo "$(PYTHON) {} --out $(ORACLE_DIR)"; $(PYTHON) {} --out $(ORACLE_DIR) || exit 255'
	@touch $@

deps:
	sh test/scripts/install_deps.sh

# What CI runs (through the README's command): dependencies, then everything,
# then every fuzz target for a bounded time each. Each stage is first built
# with JOBS compilers at once (default: the online CPUs), then run (the test
# runs themselves use every core through OpenMP).
CHECK_FUZZ_SECONDS ?= 10
JOBS ?= $(shell getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
# The unit/oracle/example runs (plain and under the sanitizers) run
# FAMILY_JOBS kernel families at once (test/scripts/per_family.sh says why);
# FAMILY_JOBS=1 runs them one after another with the output streamed. The
# script tests always run one family at a time (they time processes out and
# kill them).
FAMILY_JOBS ?= $(JOBS)
# ...each family as UNIT_SHARDS jobs of fixed shards of the suites (by the
# weights in test/unit/suites.h), so the cores stay busy to the end rather
# than one of them waiting out the last family's long run.
UNIT_SHARDS ?= 2
check: deps
	$(MAKE) -j$(JOBS) test-build
	$(MAKE) test
	$(MAKE) -j$(JOBS) sanitize-build
	$(MAKE) sanitize
	$(MAKE) -j$(JOBS) fuzz-build
	$(MAKE) fuzz FUZZ_SECONDS=$(CHECK_FUZZ_SECONDS)

# Everything `make test` runs, built (and the oracles generated).
test-build: $(TEST_BIN) $(ORACLE_STAMP) $(FAMILY_TOOL) all $(if $(HAVE_MPI),$(BENCH_COMM))

test: test-unit test-scripts

test-unit: $(TEST_BIN) $(ORACLE_STAMP) $(FAMILY_TOOL) all
	@TB_FAMILY_JOBS=$(FAMILY_JOBS) TB_FAMILY_SHARDS=$(UNIT_SHARDS) $(PER_FAMILY) "unit, oracle and example tests$(if $(TEST_LABEL), $(TEST_LABEL))" \
	    env $(TEST_ENV) TB_EXAMPLE_DIR=$(BUILD)/bin TB_ORACLE_DIR=$(ORACLE_DIR) $(TEST_BIN)

# The script tests that run library code, once per family; the ones that
# only build (headers, docs, clang, rebuilds: TB_KERNEL cannot change them)
# once. test/scripts/run_all.sh says which is which.
test-scripts: all $(FAMILY_TOOL) $(TEST_BIN)
	sh test/scripts/run_all.sh "$(CC)" "$(CXX)" build
	@TB_FAMILY_JOBS=1 $(PER_FAMILY) "script tests that run the library" sh test/scripts/run_all.sh "$(CC)" "$(CXX)" run

SANITIZE_MAKE = $(MAKE) BUILD=build/sanitize LIBOUT=build/sanitize/lib \
	    FAMILY_TOOL=$(CURDIR)/$(FAMILY_TOOL) \
	    EXTRA_CFLAGS="$(SANITIZE_FLAGS) $(DEBUG_FLAGS)" EXTRA_LDFLAGS="$(SANITIZE_FLAGS)" \
	    ORACLE_DIR=$(ORACLE_DIR) TEST_ENV="$(SANITIZE_ENV)" TEST_LABEL="under ASan+UBSan"
sanitize: $(FAMILY_TOOL)
	+$(SANITIZE_MAKE) test-unit

sanitize-build: $(FAMILY_TOOL) $(ORACLE_STAMP)
	+$(SANITIZE_MAKE) test-build

# ---- fuzzing (libFuzzer, clang) ------------------------------------------------
# Every target test/fuzz/fuzz_<name>.c in FUZZ_TARGETS is built with the
# library under ASan and UBSan and run for FUZZ_SECONDS each by `make fuzz`.
# Per target: FUZZ_SEEDS_<name> (seed and regression directories, replayed
# by the unit tests), optionally FUZZ_DICT_<name> (a libFuzzer dictionary)
# and FUZZ_SRC_<name> (more sources to link). New inputs go to
# FUZZ_CORPUS_<name> (default $(FUZZ_DIR)/corpus_<name>), a crashing input
# to $(FUZZ_DIR)/artifacts/ (named <name>-crash-...). Adding a target:
#   FUZZ_TARGETS += <name>
#   FUZZ_SEEDS_<name> := test/fuzz/corpus_<name>
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_BASE    := -std=c11 -g -O1 -fopenmp -fno-sanitize-recover=undefined \
                -Iinclude -Isrc -Iexamples/common
FUZZ_FLAGS   := $(FUZZ_BASE) -fsanitize=fuzzer,address,undefined
FUZZ_TARGETS := safetensors checkpoint
# tb_st_parse: the parser of untrusted safetensors files (its corpus and
# artifacts keep their original places).
FUZZ_SEEDS_safetensors     := test/fuzz/corpus test/fuzz/regressions
FUZZ_DICT_safetensors      := test/fuzz/safetensors.dict
FUZZ_CORPUS_safetensors    := $(FUZZ_DIR)/corpus
FUZZ_ARTIFACTS_safetensors := $(FUZZ_DIR)/artifacts/
# tb_checkpoint_load: checksums, metadata, optimizer state, non-finite
# values (seeds: `make fuzz-seeds`, test/fuzz/gen_checkpoint_corpus.c).
FUZZ_SEEDS_checkpoint := test/fuzz/corpus_checkpoint
FUZZ_DICT_checkpoint  := test/fuzz/checkpoint.dict
# The gpt examples' check of a checkpoint's configuration (gpt.c): it must
# never allocate (a 64 MB malloc limit) and accept only configurations the
# tensors agree with.
FUZZ_TARGETS += gpt_config
FUZZ_SEEDS_gpt_config := test/fuzz/corpus_gpt
FUZZ_DICT_gpt_config  := test/fuzz/gpt_config.dict
FUZZ_SRC_gpt_config   := $(GPT_SRC)
FUZZ_OPTS_gpt_config  := -malloc_limit_mb=64

# PEFT LoRA adapter files: tb_lora_file_parse() and tb_lora_file_apply()
# (seeds: test/fuzz/gen_lora_file_corpus.py; replayed by test_lora_file.c).
FUZZ_TARGETS += lora_file
FUZZ_SEEDS_lora_file := test/fuzz/corpus_lora_file test/fuzz/regressions_lora_file
FUZZ_DICT_lora_file  := test/fuzz/lora_file.dict

# The WordPiece tokenizer: texts (any bytes, every configuration) with a
# built-in vocabulary, and vocabularies (test/fuzz/wordpiece_harness.h;
# seeds replayed by test_wordpiece.c).
FUZZ_TARGETS += wordpiece
FUZZ_SEEDS_wordpiece := test/fuzz/corpus_wordpiece

# The examples' JSON reader for configuration files (examples/common/ex_json.c).
FUZZ_TARGETS += ex_json
FUZZ_SEEDS_ex_json := test/fuzz/corpus_ex_json
FUZZ_SRC_ex_json   := examples/common/ex_json.c examples/common/ex_text.c

FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)
FUZZ_HDRS := $(wildcard include/*.h include/tblocks/*.h src/*/*.h)
FUZZ_DEPS := $(FUZZ_HDRS) $(wildcard test/fuzz/*.h examples/common/*.h)
# The library, compiled once for every target with the fuzzer's coverage
# instrumentation and sanitizers (fuzzer-no-link: libFuzzer's main comes
# with each target's link).
FUZZ_LIB     := $(FUZZ_DIR)/libtblocks_fuzz.a
FUZZ_LIB_OBJ := $(LIB_SRC:src/%.c=$(FUZZ_DIR)/obj/%.o)

$(FUZZ_DIR)/obj/%.o: src/%.c $(FUZZ_HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_BASE) -fsanitize=fuzzer-no-link,address,undefined -c $< -o $@

$(FUZZ_LIB): $(FUZZ_LIB_OBJ)
	rm -f $@
	$(AR) rcs $@ $^

$(FUZZ_DIR)/fuzz_%: test/fuzz/fuzz_%.c $(FUZZ_DEPS) $(FUZZ_LIB) $$(FUZZ_SRC_$$*)
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(FUZZ_SRC_$*) $(FUZZ_LIB) -lm

fuzz-build: $(FUZZ_BINS)

# One target's run: `make fuzz-run-<name>`; `make fuzz` runs them all, one
# after the other (`make -k fuzz` goes on past a target that crashed).
fuzz_corpus    = $(or $(FUZZ_CORPUS_$(1)),$(FUZZ_DIR)/corpus_$(1))
fuzz_artifacts = $(or $(FUZZ_ARTIFACTS_$(1)),$(FUZZ_DIR)/artifacts/$(1)-)

$(FUZZ_TARGETS:%=fuzz-run-%): fuzz-run-%: $(FUZZ_DIR)/fuzz_%
	@mkdir -p $(call fuzz_corpus,$*) $(FUZZ_DIR)/artifacts
	@echo "fuzz: $* for $(FUZZ_SECONDS) s (a crash input lands in $(call fuzz_artifacts,$*)*;"
	@echo "fuzz: copy it to the target's regressions directory with the fix)"
	ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=suppressions=$(CURDIR)/test/lsan.supp \
	    $(FUZZ_DIR)/fuzz_$* -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -print_final_stats=1 $(if $(FUZZ_DICT_$*),-dict=$(FUZZ_DICT_$*)) $(FUZZ_OPTS_$*) \
	    -artifact_prefix=$(call fuzz_artifacts,$*) \
	    $(call fuzz_corpus,$*) $(wildcard $(FUZZ_SEEDS_$*))

.PHONY: $(FUZZ_TARGETS:%=fuzz-run-%)
fuzz: $(FUZZ_TARGETS:%=fuzz-run-%)

# The checkpoint target's seeds, regenerated (they are committed; the unit
# tests replay them and check each one's expected outcome).
$(BUILD)/test/gen_checkpoint_corpus: test/fuzz/gen_checkpoint_corpus.c test/fuzz/checkpoint_harness.h $(LIB) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Isrc -o $@ $< $(LIB) $(LDLIBS_ALL)

fuzz-seeds: $(BUILD)/test/gen_checkpoint_corpus
	rm -f test/fuzz/corpus_checkpoint/*
	$(BUILD)/test/gen_checkpoint_corpus test/fuzz/corpus_checkpoint

# Every benchmark runs for the best family this CPU has and, on an AVX-512
# machine, again with the AVX2 family forced (what an AVX2-only CPU runs);
# BENCH_KERNELS="avx2 portable" picks others.
bench: $(BENCH_BINS) $(FAMILY_TOOL)
	@echo "bench: comparing against: $(or $(strip $(if $(BENCH_DNNL),oneDNN) $(if $(BENCH_OPENBLAS),OpenBLAS)),nothing)"
	@echo "bench: skipped (not installed): $(or $(strip $(BENCH_SKIPPED)),nothing)"
	@best=$$(TB_KERNEL=auto $(FAMILY_TOOL)) || exit 1; \
	fams="$${BENCH_KERNELS:-$$best $$(test "$$best" = avx512 && echo avx2)}"; \
	TB_FAMILY_JOBS=1 sh test/scripts/per_family.sh "$$fams" $(FAMILY_TOOL) "benchmarks" \
	    sh -c 'for b; do echo "== $$b (TB_KERNEL=$$TB_KERNEL)"; $$b || exit 1; done' sh $(BENCH_BINS)
	@$(MAKE) --no-print-directory bench-dp

# Data-parallel training over MPI (test/bench/dp.sh): step times for 1 and 2
# processes against one process on 2 threads, bytes per step, collective
# bandwidth. Needs MPI (skipped, and said so, without it).
ifneq ($(HAVE_MPI),)
bench-dp: all $(BENCH_COMM)
	sh test/bench/dp.sh $(BUILD)
$(BENCH_COMM): test/bench/mpi/bench_comm.c $(BENCH_HARNESS_OBJ) $(MPI_LIB) $(LIB) $(FLAGS_STAMP) $(BENCH_STAMP)
	@mkdir -p $(dir $@)
	$(MPI_CC) $(CFLAGS_ALL) $(BENCH_CFLAGS) $(MPI_CFLAGS) -Itest/bench $(DEPFLAGS) -o $@ $< \
	    $(BENCH_HARNESS_OBJ) $(MPI_LIB) $(LIB) $(MPI_LIBS) $(LDLIBS_ALL)
else
bench-dp:
	@echo "bench: data-parallel benchmark skipped: MPI compiler wrapper '$(MPICC)' not found"
endif

$(BENCH_HARNESS_OBJ): $(BENCH_HARNESS) test/bench/harness.h $(FLAGS_STAMP) $(BENCH_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(BENCH_CFLAGS) $(DEPFLAGS) -c $< -o $@

# Benchmarks may use the examples' model wiring (bench_gpt.c).
$(BUILD)/bench/%: test/bench/%.c $(BENCH_HARNESS_OBJ) $(GPT_OBJ) $(LIB) $(FLAGS_STAMP) $(BENCH_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(BENCH_CFLAGS) -Iexamples/common $(DEPFLAGS) -o $@ $< $(BENCH_HARNESS_OBJ) $(GPT_OBJ) $(LIB) $(BENCH_LIBS) $(LDLIBS_ALL)

docs:
	@mkdir -p $(BUILD)/docs
	( cat docs/Doxyfile; echo "OUTPUT_DIRECTORY=$(BUILD)/docs"; \
	  echo "PROJECT_NUMBER=$(VERSION)" ) | doxygen -

# The flagship example: train the byte-level GPT on its built-in corpus
# (about a minute on 2 cores), then generate with every decoding strategy.
DEMO_CKPT := $(BUILD)/gpt_demo.safetensors
demo: $(BUILD)/bin/gpt
	$(BUILD)/bin/gpt train --ckpt $(DEMO_CKPT) --csv $(BUILD)/gpt_demo_loss.csv \
	    --svg $(BUILD)/gpt_demo_loss.svg
	$(BUILD)/bin/gpt repetition --ckpt $(DEMO_CKPT) --max-new 300

# ---- the guide and the correctness page ------------------------------------
# docs/guide/guide.manifest lists every page's demonstration. `make guide`
# runs each one's command (in this build: build/bin) and rewrites only the
# pages' output sections; `make guide-fast` runs each at a small size and
# fails if one no longer runs or lost its page's shape (the script tests run
# it in every family). GUIDE_ONLY=name,name restricts both.
GUIDE_PY = $(PYTHON) test/scripts/guide.py --family-tool $(FAMILY_TOOL) $(if $(GUIDE_ONLY),--only $(GUIDE_ONLY))
guide: all $(FAMILY_TOOL)
	$(GUIDE_PY)

guide-fast: all $(FAMILY_TOOL)
	$(GUIDE_PY) --fast

# Every unit-test suite once, in one family (CORRECTNESS_KERNEL, default the
# best this CPU runs), then the worst errors per suite into docs/correctness.md.
CORRECTNESS_LOG := $(BUILD)/correctness/unit.log
correctness: $(TEST_BIN) $(ORACLE_STAMP) $(FAMILY_TOOL) all
	@fam=$${CORRECTNESS_KERNEL:-$$(TB_KERNEL=auto $(FAMILY_TOOL))} || exit 1; \
	TB_KERNEL=$$fam sh test/scripts/correctness_run.sh $(TEST_BIN) $(ORACLE_DIR) $(BUILD)/bin \
	    $(CORRECTNESS_LOG) && \
	$(PYTHON) test/scripts/correctness.py --log $(CORRECTNESS_LOG) --family $$fam --doc docs/correctness.md

# ---- install ---------------------------------------------------------------

$(BUILD)/tblocks.pc: pkgconfig/tblocks.pc.in include/tblocks/version.h
	@mkdir -p $(dir $@)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR_INSTALL)|' \
	    -e 's|@INCLUDEDIR@|$(INCDIR_INSTALL)|' -e 's|@VERSION@|$(VERSION)|' $< > $@

.PHONY: $(BUILD)/tblocks.pc

$(BUILD)/tblocks-mpi.pc: pkgconfig/tblocks-mpi.pc.in include/tblocks/version.h
	@mkdir -p $(dir $@)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR_INSTALL)|' \
	    -e 's|@INCLUDEDIR@|$(INCDIR_INSTALL)|' -e 's|@VERSION@|$(VERSION)|' $< > $@

.PHONY: $(BUILD)/tblocks-mpi.pc

# libtblocks_mpi.a, its header and tblocks-mpi.pc are installed when MPI
# was found (HAVE_MPI).
install: $(LIB) $(BUILD)/tblocks.pc $(if $(HAVE_MPI),$(MPI_LIB) $(BUILD)/tblocks-mpi.pc)
	install -d $(DESTDIR)$(LIBDIR_INSTALL)/pkgconfig $(DESTDIR)$(INCDIR_INSTALL)/tblocks
	install -m 644 $(LIB) $(DESTDIR)$(LIBDIR_INSTALL)/libtblocks.a
	install -m 644 include/tblocks.h $(DESTDIR)$(INCDIR_INSTALL)/tblocks.h
	install -m 644 include/tblocks/*.h $(DESTDIR)$(INCDIR_INSTALL)/tblocks/
	install -m 644 $(BUILD)/tblocks.pc $(DESTDIR)$(LIBDIR_INSTALL)/pkgconfig/tblocks.pc
ifneq ($(HAVE_MPI),)
	install -m 644 $(MPI_LIB) $(DESTDIR)$(LIBDIR_INSTALL)/libtblocks_mpi.a
	install -m 644 include/tblocks_mpi.h $(DESTDIR)$(INCDIR_INSTALL)/tblocks_mpi.h
	install -m 644 $(BUILD)/tblocks-mpi.pc $(DESTDIR)$(LIBDIR_INSTALL)/pkgconfig/tblocks-mpi.pc
endif

uninstall:
	rm -f $(DESTDIR)$(LIBDIR_INSTALL)/libtblocks.a $(DESTDIR)$(LIBDIR_INSTALL)/pkgconfig/tblocks.pc
	rm -f $(DESTDIR)$(LIBDIR_INSTALL)/libtblocks_mpi.a $(DESTDIR)$(LIBDIR_INSTALL)/pkgconfig/tblocks-mpi.pc
	rm -f $(DESTDIR)$(INCDIR_INSTALL)/tblocks.h $(DESTDIR)$(INCDIR_INSTALL)/tblocks_mpi.h
	rm -f $(addprefix $(DESTDIR)$(INCDIR_INSTALL)/tblocks/,$(notdir $(wildcard include/tblocks/*.h)))
	-rmdir $(DESTDIR)$(INCDIR_INSTALL)/tblocks 2>/dev/null

clean:
	rm -rf build lib/libtblocks.a lib/libtblocks_mpi.a

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
