#!/usr/bin/env node
// The include directions of docs/design.md, checked (issue 12: "a test or script checks the
// include directions listed in docs/design.md and fails on an upward include").
//
//   node tools/include_check.mjs [REPO_ROOT]
//
// docs/design.md holds one fenced block tagged `include-rules`:
//
//   include/lowbit/core = include/lowbit/dtype.h include/lowbit/shape.h ...   (a named group)
//   src/kernels -> include/lowbit/core src/kernels                             (a rule)
//
// Every file under src/ and include/lowbit/ belongs to the group that lists it, else to the
// module (a directory named anywhere in the rules) that is the longest prefix of its path. A
// quoted include (the name looked up under include/, then src/, then beside the file)
// is allowed when the included file belongs to the including file's
// own module or to one the rule lists. A
// module with no rule may include anything; a file whose include does not resolve is an error.
// Exit 0 when every include is allowed; else 1, listing each upward include with its rule.
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(process.argv[2] ?? path.join(path.dirname(new URL(import.meta.url).pathname), '..'));
const design = path.join(root, 'docs/design.md');
const text = fs.readFileSync(design, 'utf8');
const block = text.match(/```include-rules\n([\s\S]*?)```/);
if (!block) {
  console.error(`include_check: ${design} has no \`\`\`include-rules block`);
  process.exit(1);
}

const groups = new Map();  // name -> [files]
const rules = new Map();   // module -> Set(allowed modules)
block[1].split('\n').forEach((raw, i) => {
  const line = raw.replace(/#.*/, '').trim();
  if (!line) return;
  let m;
  if ((m = line.match(/^(\S+)\s*=\s*(.+)$/))) {
    groups.set(m[1], m[2].split(/\s+/));
  } else if ((m = line.match(/^(\S+)\s*->\s*(.*)$/))) {
    rules.set(m[1], new Set(m[2].split(/\s+/).filter(Boolean)));
  } else {
    console.error(`include_check: docs/design.md include-rules line ${i + 1}: cannot parse '${raw}' ` +
                  `(expected 'MODULE -> ALLOWED...' or 'GROUP = FILES...')`);
    process.exit(1);
  }
});

// Module of a repository-relative path: a group containing the file, else the longest module
// named in the rules (left or right) that is a directory prefix of it.
const named = new Set([...rules.keys(), ...[...rules.values()].flatMap((s) => [...s])]);
function moduleOf(rel) {
  for (const [name, files] of groups) if (files.includes(rel)) return name;
  let best = null;
  for (const key of named) {
    if (groups.has(key)) continue;
    if ((rel === key || rel.startsWith(key + '/')) && (!best || key.length > best.length)) best = key;
  }
  return best;
}

function walk(dir, out) {
  if (!fs.existsSync(dir)) return out;
  for (const e of fs.readdirSync(dir, {withFileTypes: true})) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (/\.(h|cc|inc)$/.test(e.name)) out.push(p);
  }
  return out;
}

// A header flatc generates at build time ("X_generated.h", build/generated/) stands for its
// schema "X.fbs" beside the including file: it belongs to that file's module.
function resolve(fromRel, inc) {
  const gen = inc.match(/^([\w-]+)_generated\.h$/);
  const candidates = [path.join('include', inc), path.join('src', inc),
                      path.join(path.dirname(fromRel), inc)];
  if (gen) candidates.push(path.join(path.dirname(fromRel), `${gen[1]}.fbs`));
  return candidates.find((c) => fs.existsSync(path.join(root, c))) ?? null;
}

const files = [...walk(path.join(root, 'src'), []), ...walk(path.join(root, 'include/lowbit'), [])];
const errors = [];
let checked = 0;
for (const abs of files) {
  const rel = path.relative(root, abs);
  const mod = moduleOf(rel);
  const lines = fs.readFileSync(abs, 'utf8').split('\n');
  lines.forEach((l, i) => {
    const m = l.match(/^\s*#\s*include\s+"([^"]+)"/);
    if (!m) return;
    const target = resolve(rel, m[1]);
    if (!target) {
      errors.push(`${rel}:${i + 1}: includes "${m[1]}", which is not a file of the repository`);
      return;
    }
    ++checked;
    const tmod = moduleOf(target);
    if (!mod || !rules.has(mod) || tmod === mod) return;
    if (!rules.get(mod).has(tmod)) {
      errors.push(`${rel}:${i + 1}: includes ${target} (module ${tmod ?? 'none'}), but module ${mod} ` +
                  `may include only: ${[...rules.get(mod)].join(' ') || 'itself'} ` +
                  `(docs/design.md, include-rules)`);
    }
  });
}
if (errors.length) {
  console.error(errors.join('\n'));
  console.error(`include_check: ${errors.length} include(s) against the directions of docs/design.md`);
  process.exit(1);
}
console.log(`include_check: ${checked} includes in ${files.length} files follow docs/design.md`);
