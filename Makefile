# Builds and installs eqflow for C, C++ and Fortran programs.
#
#   make                                 release build (target/release/libeqflow.{so,a})
#   make install PREFIX=/opt/eqflow      build, then install (default PREFIX=/usr/local)
#   make uninstall PREFIX=/opt/eqflow
#
# Installed:
#   $(LIBDIR)/libeqflow.so.$(VERSION)   the shared library, soname libeqflow.so.$(ABI)
#   $(LIBDIR)/libeqflow.so.$(ABI)       -> libeqflow.so.$(VERSION)   (what programs load)
#   $(LIBDIR)/libeqflow.so              -> libeqflow.so.$(ABI)       (what -leqflow finds)
#   $(LIBDIR)/libeqflow.a               the static library
#   $(INCLUDEDIR)/eqflow.h, eqflow.hpp, eqflow.f90   C header, C++ wrapper, Fortran module source
#   $(LIBDIR)/pkgconfig/eqflow.pc       pkg-config --cflags --libs eqflow
#
# DESTDIR is honoured (staged installs); the paths written into eqflow.pc are PREFIX's.

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
DESTDIR ?=
CARGO ?= cargo
CARGO_TARGET_DIR ?= target
INSTALL ?= install

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# The C ABI version, eqf_abi_version() in src/ffi/version.rs; tests/install.rs checks they agree.
ABI := 1
SONAME := libeqflow.so.$(ABI)
REALNAME := libeqflow.so.$(VERSION)
BUILD_DIR := $(CARGO_TARGET_DIR)/release
# What a static link needs besides libeqflow.a (the Rust standard library's system libraries).
STATIC_LIBS := -lpthread -ldl -lm

.PHONY: all build install uninstall

all: build

build:
	EQFLOW_SONAME=$(SONAME) $(CARGO) build --release --lib --target-dir "$(CARGO_TARGET_DIR)"

install: build
	$(INSTALL) -d "$(DESTDIR)$(LIBDIR)/pkgconfig" "$(DESTDIR)$(INCLUDEDIR)"
	$(INSTALL) -m 755 "$(BUILD_DIR)/libeqflow.so" "$(DESTDIR)$(LIBDIR)/$(REALNAME)"
	ln -sf "$(REALNAME)" "$(DESTDIR)$(LIBDIR)/$(SONAME)"
	ln -sf "$(SONAME)" "$(DESTDIR)$(LIBDIR)/libeqflow.so"
	$(INSTALL) -m 644 "$(BUILD_DIR)/libeqflow.a" "$(DESTDIR)$(LIBDIR)/libeqflow.a"
	$(INSTALL) -m 644 include/eqflow.h include/eqflow.hpp include/eqflow.f90 \
		"$(DESTDIR)$(INCLUDEDIR)/"
	printf '%s\n' \
		'prefix=$(PREFIX)' \
		'libdir=$(LIBDIR)' \
		'includedir=$(INCLUDEDIR)' \
		'' \
		'Name: eqflow' \
		'Description: Equivariant normalizing flows as Boltzmann-generator Monte Carlo moves' \
		'Version: $(VERSION)' \
		'Libs: -L$${libdir} -leqflow' \
		'Libs.private: $(STATIC_LIBS)' \
		'Cflags: -I$${includedir}' \
		> "$(DESTDIR)$(LIBDIR)/pkgconfig/eqflow.pc"

uninstall:
	rm -f "$(DESTDIR)$(LIBDIR)/$(REALNAME)" "$(DESTDIR)$(LIBDIR)/$(SONAME)" \
		"$(DESTDIR)$(LIBDIR)/libeqflow.so" "$(DESTDIR)$(LIBDIR)/libeqflow.a" \
		"$(DESTDIR)$(LIBDIR)/pkgconfig/eqflow.pc" "$(DESTDIR)$(INCLUDEDIR)/eqflow.h" \
		"$(DESTDIR)$(INCLUDEDIR)/eqflow.hpp" "$(DESTDIR)$(INCLUDEDIR)/eqflow.f90"
