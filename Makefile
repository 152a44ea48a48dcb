# hl7bridge — plain GNU make.
#   make            build build/hl7bridge (release, -O2)
#   make run        install missing deps, build, start the daemon on config/hl7bridge.yaml
#   make test       install missing deps, build, run unit + integration tests,
#                   unit tests again under ASan and UBSan
#   make bench      load benchmark: hl7bridge vs the null MLLP responder
#   make fuzz       libFuzzer targets (FUZZ_SECONDS each)
#   make lint       banned functions, cppcheck
#   make install    PREFIX=/usr/local DESTDIR=
#   SANITIZER=address|undefined  builds into build-<sanitizer>/
#   DEBUG=1                      -O0 -g3 build into build-debug/

CC      ?= cc
PREFIX  ?= /usr/local
DESTDIR ?=
PKGS    := openssl libcurl sqlite3 yaml-0.1 libmicrohttpd jansson

WARN := -std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wpointer-arith -Wcast-qual -Wwrite-strings -Wvla -Wformat=2 -fno-common -Werror
DEFS := -D_GNU_SOURCE -D_FORTIFY_SOURCE=2

ifeq ($(SANITIZER),)
  ifeq ($(DEBUG),1)
    BUILD := build-debug
    OPT   := -O0 -g3 -U_FORTIFY_SOURCE
  else
    BUILD := build
    OPT   := -O2 -g
  endif
  SANFLAGS :=
else
  BUILD := build-$(SANITIZER)
  OPT   := -O1 -g -fno-omit-frame-pointer
  SANFLAGS := -fsanitize=$(SANITIZER) -fno-sanitize-recover=all
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS  += $(WARN) $(DEFS) $(OPT) $(SANFLAGS) -I. $(PKG_CFLAGS) -MMD -MP
LDFLAGS += $(SANFLAGS)
LDLIBS  += $(PKG_LIBS) -lpthread -lm

MODULES  := core mllp hl7 mapping store sinks config
LIB_SRCS := $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
BIN_SRCS := $(wildcard daemon/*.c)
BIN_OBJS := $(BIN_SRCS:%.c=$(BUILD)/%.o) $(BUILD)/gen/default_config.o $(BUILD)/gen/default_rules.o
# The shipped rules, in the order they apply (compiled into the binary too).
RULE_FILES := config/mappings/adt.yaml config/mappings/siu.yaml config/mappings/access-audit.yaml
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_SRCS := $(wildcard tests/bench/*.c)
BENCH_BINS := $(BENCH_SRCS:tests/bench/%.c=$(BUILD)/bench/%)
FUZZ_TARGETS := $(notdir $(wildcard tests/fuzz/*))

.PHONY: all deps test-deps run test unit unit-asan unit-ubsan integration bench fuzz fuzz-short \
        lint install clean
all: $(BUILD)/hl7bridge

$(BUILD)/libhl7bridge.a: $(LIB_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/hl7bridge: $(BIN_OBJS) $(BUILD)/libhl7bridge.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The shipped configuration is compiled in: `hl7bridge run` falls back to it
# when no -c is given and config/hl7bridge.yaml is not there.
# Its state paths are written relative to config/ (../var/…); the compiled-in
# copy keeps them in the working directory (var/…).
$(BUILD)/gen/default_config.c: config/hl7bridge.yaml scripts/embed.sh
	@mkdir -p $(@D)
	sed 's|\.\./var/|var/|' $< > $(BUILD)/gen/default_config.yaml
	scripts/embed.sh $(BUILD)/gen/default_config.yaml $@ hb_default_config

# The shipped rules likewise: a configuration without mapping.rules uses
# these, from any working directory.
$(BUILD)/gen/default_rules.c: $(RULE_FILES) scripts/embed.sh
	@mkdir -p $(@D)
	scripts/embed.sh --rules $@ hb_default_rules $(RULE_FILES)

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) -Wno-missing-prototypes -c -o $@ $<

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

# Each unit test links only the modules it tests (plus core), so one module
# being reworked never breaks another module's tests.  A test not listed links
# every module.
MODS_test_hl7     := core hl7
MODS_test_mllp    := core mllp
MODS_test_store   := core store
MODS_test_powerloss := core store
MODS_test_config  := core config
MODS_test_mapping := core hl7 mapping
MODS_test_core    := core
mod_objs = $(patsubst %.c,$(BUILD)/%.o,$(foreach m,$(1),$(wildcard $(m)/*.c)))
test_objs = $(call mod_objs,$(if $(MODS_$(1)),$(MODS_$(1)),$(MODULES)))

.SECONDEXPANSION:
$(BUILD)/tests/%: tests/unit/%.c $$(call test_objs,$$*)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(call test_objs,$*) $(LDFLAGS) $(LDLIBS) -lcmocka

$(BUILD)/bench/%: tests/bench/%.c $(BUILD)/libhl7bridge.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libhl7bridge.a $(LDFLAGS) $(LDLIBS)

deps:
	@scripts/deps.sh build
test-deps:
	@scripts/deps.sh test

run: deps all
	@mkdir -p var
	./$(BUILD)/hl7bridge run -c config/hl7bridge.yaml

# Unit tests run from the project root so they can find tests/fixtures and
# ../shared/corpus.
unit: $(UNIT_BINS)
	@scripts/run-unit.sh $(UNIT_BINS)

unit-asan:
	$(MAKE) --no-print-directory SANITIZER=address unit
unit-ubsan:
	$(MAKE) --no-print-directory SANITIZER=undefined unit

integration: all $(BENCH_BINS)
	@scripts/run-integration.sh $(BUILD)

test: test-deps
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory integration
	scripts/valgrind-smoke.sh $(BUILD)
	$(MAKE) --no-print-directory unit-asan
	$(MAKE) --no-print-directory unit-ubsan
	$(MAKE) --no-print-directory fuzz-short
	@scripts/summary.sh

bench: deps all $(BENCH_BINS)
	@scripts/bench.sh $(BUILD)

FUZZ_SECONDS ?= 60
fuzz:
	@scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)
fuzz-short:
	@scripts/fuzz.sh $${FUZZ_SHORT_SECONDS:-20} $(FUZZ_TARGETS)

lint:
	@scripts/lint.sh

install: $(BUILD)/hl7bridge
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/hl7bridge/mappings
	install -m 0755 $(BUILD)/hl7bridge $(DESTDIR)$(PREFIX)/bin/hl7bridge
	install -m 0644 config/hl7bridge.yaml $(DESTDIR)$(PREFIX)/share/hl7bridge/hl7bridge.yaml
	if [ -d config/mappings ]; then install -m 0644 config/mappings/*.yaml $(DESTDIR)$(PREFIX)/share/hl7bridge/mappings/; fi

clean:
	rm -rf build build-* var/test-*

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
