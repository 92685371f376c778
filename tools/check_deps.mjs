// Checks that every file a build used comes from a Debian package that scripts/setup installs.
// Run through scripts/check-deps (which passes setup's package list); see its header for usage.
//
// A machine's leftovers cannot fool it: it does not ask whether the build works here, but which
// files the build read and who owns them, and whether a fresh machine would have that owner.
//
// 1. Files the build used, per build tree:
//    - CMakeCache.txt: every FILEPATH entry that names a file (tools, libraries, headers CMake
//      found), and every <Pkg>_DIR PATH entry's package config files (*.cmake in that folder);
//    - `ninja -t deps`: every header the compiler read (the depfiles);
//    - `ninja -t commands`: every library on a link line (absolute paths, -lNAME resolved with the
//      compiler, and the runtimes that -fopenmp / -fsanitize pull in);
//    - `ldd` of every executable built (what the tests and the demo load when they run).
//    Files inside the source or build tree are the project's own and are skipped.
// 2. Each file's owner: the dpkg database (/var/lib/dpkg/info/*.list), looked up as written,
//    with the merged-/usr twin (/lib <-> /usr/lib), and after resolving symlinks. A file no
//    package owns (e.g. something built by hand into /usr/local) is an error of its own.
// 3. Allowed owners: the packages scripts/setup installs and the closure of their Depends and
//    Pre-Depends (never Recommends or Suggests), plus the base system of a fresh Debian 12 image
//    (Essential: yes, Priority: required) and build-essential's closure. Alternatives ("a | b")
//    follow what apt would keep: an alternative already in the set or the base, else the first
//    that is installed here; virtual packages resolve to their installed providers.
//
// Prints one error per missing package, naming a file it owns, where the build used it and the
// line to add to scripts/setup; exits 1 if there is any, 0 otherwise.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

function usage(msg) {
  if (msg) console.error(`error: check-deps: ${msg}`);
  console.error(
    "usage: check_deps.mjs --packages 'PKG ...' --source DIR [--dpkg-admin DIR] [--verbose] BUILD_DIR...",
  );
  process.exit(2);
}

const args = process.argv.slice(2);
let packages = null;
let sourceDir = null;
let dpkgAdmin = "/var/lib/dpkg";
let verbose = false;
const buildDirs = [];
for (let i = 0; i < args.length; ++i) {
  const a = args[i];
  if (a === "--packages") packages = (args[++i] ?? usage("--packages needs a value")).split(/\s+/).filter(Boolean);
  else if (a === "--source") sourceDir = args[++i] ?? usage("--source needs a value");
  else if (a === "--dpkg-admin") dpkgAdmin = args[++i] ?? usage("--dpkg-admin needs a value");
  else if (a === "--verbose") verbose = true;
  else if (a.startsWith("-")) usage(`unknown option '${a}'`);
  else buildDirs.push(a);
}
if (!packages || packages.length === 0) usage("no package list (--packages)");
if (!sourceDir) usage("no source folder (--source)");
if (buildDirs.length === 0) usage("no build folder given");

const run = (cmd, argv, opts = {}) =>
  execFileSync(cmd, argv, { encoding: "utf8", maxBuffer: 1 << 30, stdio: ["ignore", "pipe", "pipe"], ...opts });

// ---------------------------------------------------------------------------------------------
// The dpkg database: installed packages (status) and the files they own (info/*.list).

function parseStatus(text) {
  const pkgs = new Map();
  for (const para of text.split(/\n\n+/)) {
    const fields = {};
    let last = null;
    for (const line of para.split("\n")) {
      if (/^\s/.test(line) && last) fields[last] += "\n" + line;
      else {
        const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
        if (m) fields[(last = m[1])] = m[2];
      }
    }
    if (!fields.Package || !/\binstalled$/.test(fields.Status ?? "")) continue;
    pkgs.set(fields.Package, fields);
  }
  return pkgs;
}

const installed = parseStatus(fs.readFileSync(path.join(dpkgAdmin, "status"), "utf8"));
const providers = new Map(); // virtual name -> installed packages providing it
for (const [name, f] of installed) {
  for (const p of (f.Provides ?? "").split(",")) {
    const v = p.trim().split(/[\s(]/)[0];
    if (!v) continue;
    if (!providers.has(v)) providers.set(v, []);
    providers.get(v).push(name);
  }
}

const owners = new Map(); // path -> [package]
for (const file of fs.readdirSync(path.join(dpkgAdmin, "info"))) {
  if (!file.endsWith(".list")) continue;
  const pkg = file.slice(0, -5).split(":")[0];
  for (const p of fs.readFileSync(path.join(dpkgAdmin, "info", file), "utf8").split("\n")) {
    if (!p || p === "/.") continue;
    if (!owners.has(p)) owners.set(p, []);
    owners.get(p).push(pkg);
  }
}

function usrTwin(p) {
  for (const d of ["/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/"]) {
    if (p.startsWith(d)) return "/usr" + p;
    if (p.startsWith("/usr" + d)) return p.slice(4);
  }
  return null;
}

function ownersOf(file) {
  const tried = [path.resolve(file)];
  try {
    tried.push(fs.realpathSync(file));
  } catch {
    // a dangling path: only the lexical form can be looked up
  }
  for (const p of tried) {
    for (const q of [p, usrTwin(p)]) {
      if (q && owners.has(q)) return owners.get(q);
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// The allowed set: setup's packages + Depends/Pre-Depends closure, the base system.

function depClauses(name) {
  const f = installed.get(name);
  if (!f) return [];
  const text = [f["Pre-Depends"], f.Depends].filter(Boolean).join(",");
  return text
    .split(",")
    .map((c) =>
      c
        .split("|")
        .map((alt) => alt.trim().split(/[\s(]/)[0].split(":")[0])
        .filter(Boolean),
    )
    .filter((c) => c.length);
}

// Installed packages that satisfy one alternative (itself, or its providers if virtual).
function satisfiers(alt) {
  const out = [];
  if (installed.has(alt)) out.push(alt);
  for (const p of providers.get(alt) ?? []) if (!out.includes(p)) out.push(p);
  return out;
}

function closure(roots, base = new Set()) {
  const set = new Set();
  const queue = [];
  const add = (p) => {
    if (!set.has(p)) {
      set.add(p);
      queue.push(p);
    }
  };
  for (const r of roots) for (const s of satisfiers(r)) add(s);
  while (queue.length) {
    const p = queue.shift();
    for (const clause of depClauses(p)) {
      const sat = clause.map(satisfiers);
      // Already satisfied by what we have (or by the base system): apt would add nothing.
      if (sat.some((s) => s.some((x) => set.has(x) || base.has(x)))) continue;
      const first = sat.find((s) => s.length);
      if (first) add(first[0]);
    }
  }
  return set;
}

const baseRoots = [...installed]
  .filter(([, f]) => f.Essential === "yes" || f.Priority === "required")
  .map(([n]) => n);
const base = closure([...baseRoots, "build-essential"]);
const notInstalled = packages.filter((p) => satisfiers(p).length === 0);
const allowed = closure(packages, base);

// ---------------------------------------------------------------------------------------------
// The files each build tree used.

const src = path.resolve(sourceDir);
const used = new Map(); // file -> first reason it was used

function note(file, why) {
  if (!file || !path.isAbsolute(file)) return;
  const p = path.resolve(file);
  for (const own of [src, ...buildDirs.map((b) => path.resolve(b))]) {
    if (p === own || p.startsWith(own + path.sep)) return;
  }
  if (p.startsWith("/proc/") || p.startsWith("/dev/") || p.startsWith("/tmp/")) return;
  if (!used.has(p)) used.set(p, why);
}

function isFile(p) {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

function isDir(p) {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

const compilerCache = new Map();
function compilerFile(cxx, name) {
  const key = `${cxx}\0${name}`;
  if (!compilerCache.has(key)) {
    let out = "";
    try {
      out = run(cxx, [`-print-file-name=${name}`]).trim();
    } catch {
      // the compiler could not answer: the name stays unresolved
    }
    compilerCache.set(key, path.isAbsolute(out) && isFile(out) ? out : null);
  }
  return compilerCache.get(key);
}

// clang's folder of runtime libraries (sanitizers, libFuzzer), or null.
const runtimeDirCache = new Map();
function clangRuntimeDir(cxx) {
  if (!runtimeDirCache.has(cxx)) {
    let out = null;
    try {
      out = run(cxx, ["-print-runtime-dir"]).trim();
    } catch {
      // no answer: the runtimes stay unchecked
    }
    runtimeDirCache.set(cxx, out && isDir(out) ? out : null);
  }
  return runtimeDirCache.get(cxx);
}

let problems = 0;
for (const dir of buildDirs) {
  const rel = path.relative(process.cwd(), path.resolve(dir)) || dir;
  const cachePath = path.join(dir, "CMakeCache.txt");
  if (!isFile(cachePath)) {
    console.error(`error: check-deps: ${cachePath} not found: configure and build ${rel} first`);
    process.exit(1);
  }
  let cxx = "c++";
  for (const line of fs.readFileSync(cachePath, "utf8").split("\n")) {
    const m = /^([A-Za-z0-9_.+-]+):(FILEPATH|PATH)=(.*)$/.exec(line);
    if (!m) continue;
    const [, key, type, value] = m;
    if (key === "CMAKE_CXX_COMPILER") cxx = value;
    if (type === "FILEPATH" && isFile(value)) note(value, `CMake found it (${key} in ${rel}/CMakeCache.txt)`);
    if (type === "PATH" && key.endsWith("_DIR") && isDir(value)) {
      for (const f of fs.readdirSync(value)) {
        if (f.endsWith(".cmake")) note(path.join(value, f), `CMake read it (package config, ${key} in ${rel}/CMakeCache.txt)`);
      }
    }
  }

  let deps = "";
  try {
    deps = run("ninja", ["-C", dir, "-t", "deps"]);
  } catch (e) {
    console.error(`error: check-deps: 'ninja -C ${rel} -t deps' failed: ${e.stderr || e.message}`);
    process.exit(1);
  }
  let target = "";
  let headers = 0;
  for (const line of deps.split("\n")) {
    if (/^\S.*: #deps/.test(line)) target = line.split(":")[0];
    else if (/^\s+\//.test(line)) {
      note(line.trim(), `the compiler read it (ninja -t deps, ${rel}/${target})`);
      ++headers;
    }
  }
  if (headers === 0) {
    console.error(`error: check-deps: 'ninja -C ${rel} -t deps' lists no header: build ${rel} first`);
    process.exit(1);
  }

  const commands = run("ninja", ["-C", dir, "-t", "commands"]).split("\n");
  const executables = [];
  for (const cmd of commands) {
    if (!/\s-o\s/.test(cmd) || /\s-c\s/.test(cmd) || !/(^|\/)(c\+\+|g\+\+|clang\+\+)[-0-9.]*\s/.test(cmd)) continue;
    const tokens = cmd.split(/\s+/);
    const clang = /(^|\/)clang\+\+[-0-9.]*$/.test(cxx);
    const out = tokens[tokens.indexOf("-o") + 1];
    executables.push(path.resolve(dir, out));
    const why = `the linker used it (${rel}/${out})`;
    for (const t of tokens) {
      if (path.isAbsolute(t) && /\.(so(\.[0-9.]+)?|a)$/.test(t)) note(t, why);
      const l = /^-l(.+)$/.exec(t);
      if (l) note(compilerFile(cxx, `lib${l[1]}.so`) ?? compilerFile(cxx, `lib${l[1]}.a`), why);
      if (t === "-fopenmp") note(compilerFile(cxx, clang ? "libomp.so" : "libgomp.so"), why);
      if (/^-fopenmp=/.test(t)) note(compilerFile(cxx, `${t.slice(9)}.so`), why);
      const san = /^-fsanitize=(.+)$/.exec(t);
      if (san) {
        for (const s of san[1].split(",")) {
          if (clang) {
            // clang links its static runtimes from its runtime folder (libclang-rt-*-dev).
            const rt = { address: "asan", undefined: "ubsan_standalone", fuzzer: "fuzzer", thread: "tsan", leak: "lsan" }[s];
            if (rt && clangRuntimeDir(cxx)) note(path.join(clangRuntimeDir(cxx), `libclang_rt.${rt}-x86_64.a`), why);
            continue;
          }
          const lib = { address: "libasan.so", undefined: "libubsan.so", thread: "libtsan.so", leak: "liblsan.so" }[s];
          if (lib) note(compilerFile(cxx, lib), why);
        }
      }
    }
  }
  for (const exe of new Set(executables)) {
    if (!isFile(exe)) continue;
    let out = "";
    try {
      out = run("ldd", [exe]);
    } catch {
      continue; // not a dynamic executable
    }
    for (const line of out.split("\n")) {
      const m = /=>\s+(\/\S+)/.exec(line) ?? /^\s+(\/\S+)\s+\(/.exec(line);
      if (m) note(m[1], `${path.relative(process.cwd(), exe)} loads it at run time (ldd)`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Verdict.

const missing = new Map(); // package -> [file, why]
const unowned = [];
const seen = new Set();
for (const [file, why] of used) {
  const own = ownersOf(file);
  if (!own) {
    unowned.push([file, why]);
    continue;
  }
  own.forEach((p) => seen.add(p));
  if (own.some((p) => allowed.has(p) || base.has(p))) continue;
  const pkg = own[0];
  if (!missing.has(pkg)) missing.set(pkg, [file, why]);
}

for (const p of notInstalled) {
  console.error(`error: check-deps: scripts/setup lists '${p}', which is not installed here: run scripts/setup first`);
  ++problems;
}
for (const [pkg, [file, why]] of missing) {
  console.error(
    `error: check-deps: ${file} belongs to the Debian package '${pkg}', which scripts/setup does not install\n` +
      `       (used because ${why}; '${pkg}' is not in setup's list, not a Depends/Pre-Depends of a listed\n` +
      `       package, not part of the base system; a fresh machine will not have it).\n` +
      `       Fix: add ${pkg} to REQUIRED in scripts/setup, e.g.  REQUIRED+=(${pkg})`,
  );
  ++problems;
}
for (const [file, why] of unowned) {
  console.error(
    `error: check-deps: ${file} belongs to no Debian package (used because ${why}):\n` +
      `       it was put there by hand and a fresh machine will not have it; use a Debian package instead`,
  );
  ++problems;
}
if (verbose) {
  for (const p of [...seen].sort()) console.log(`    ${allowed.has(p) ? "setup" : "base "}  ${p}`);
}
const summary = `${used.size} files from ${seen.size} packages in ${buildDirs.join(", ")}`;
if (problems) {
  console.error(`check-deps: FAILED: ${problems} problem(s) (${summary})`);
  process.exit(1);
}
console.log(`check-deps: ok: ${summary}; every one installed by scripts/setup or part of the base system`);
