#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# A strict parser of the Prometheus text exposition format (version 0.0.4), for the tests:
# exits 1 naming the first bad line; with --get NAME LABEL=VALUE... prints that sample's value.
import math
import re
import sys

NAME = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*')
LABEL = re.compile(r'[a-zA-Z_][a-zA-Z0-9_]*')
TYPES = {'counter', 'gauge', 'histogram', 'summary', 'untyped'}


def die(n, line, why):
    sys.exit(f'prom-check: line {n}: {why}: {line!r}')


def parse_labels(s, n, line):
    labels, i = {}, 0
    while i < len(s):
        m = LABEL.match(s, i)
        if not m:
            die(n, line, 'bad label name')
        name = m.group(0)
        i = m.end()
        if s[i:i + 2] != '="':
            die(n, line, 'expected =" after the label name')
        i += 2
        val = []
        while True:
            if i >= len(s):
                die(n, line, 'unterminated label value')
            c = s[i]
            if c == '\\':
                e = s[i + 1:i + 2]
                if e not in ('\\', '"', 'n'):
                    die(n, line, 'bad escape in a label value')
                val.append('\n' if e == 'n' else e)
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == '\n':
                die(n, line, 'raw newline in a label value')
            else:
                val.append(c)
                i += 1
        if name in labels:
            die(n, line, f'label {name} twice')
        labels[name] = ''.join(val)
        if i < len(s):
            if s[i] != ',':
                die(n, line, 'expected , between labels')
            i += 1
    return labels


def parse(text):
    if text and not text.endswith('\n'):
        sys.exit('prom-check: the last line has no newline')
    types, helps, seen, samples, done = {}, {}, set(), [], set()
    current = None
    for n, line in enumerate(text.split('\n')[:-1], 1):
        if line == '':
            die(n, line, 'empty line')
        if line.startswith('#'):
            parts = line.split(' ', 3)
            if len(parts) >= 3 and parts[1] in ('HELP', 'TYPE'):
                name = parts[2]
                if not NAME.fullmatch(name):
                    die(n, line, 'bad metric name')
                if parts[1] == 'TYPE':
                    if len(parts) != 4 or parts[3] not in TYPES:
                        die(n, line, 'bad type')
                    if name in types:
                        die(n, line, 'second TYPE line')
                    if name in seen:
                        die(n, line, 'TYPE after samples')
                    types[name] = parts[3]
                else:
                    if name in helps:
                        die(n, line, 'second HELP line')
                    helps[name] = parts[3] if len(parts) == 4 else ''
            continue
        m = NAME.match(line)
        if not m:
            die(n, line, 'bad metric name')
        name, rest = m.group(0), line[m.end():]
        labels = {}
        if rest.startswith('{'):
            end = rest.rfind('}')
            if end < 0:
                die(n, line, 'no closing }')
            labels = parse_labels(rest[1:end], n, line)
            rest = rest[end + 1:]
        if not rest.startswith(' '):
            die(n, line, 'expected a space before the value')
        fields = rest[1:].split(' ')
        if len(fields) not in (1, 2):
            die(n, line, 'expected VALUE [TIMESTAMP]')
        try:
            value = float(fields[0]) if fields[0] not in ('+Inf', '-Inf', 'NaN') else float(fields[0].lower())
        except ValueError:
            die(n, line, 'bad value')
        if len(fields) == 2 and not re.fullmatch(r'-?[0-9]+', fields[1]):
            die(n, line, 'bad timestamp')
        family = name
        if name != current:
            if name in done:
                die(n, line, 'samples of one metric are not together')
            if current:
                done.add(current)
            current = name
        if types.get(family) == 'counter' and (value < 0 or math.isnan(value)):
            die(n, line, 'negative counter')
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            die(n, line, 'duplicate series')
        seen.add(key)
        seen.add(name)
        samples.append((name, labels, value))
    return samples


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit('Usage: prom-check.py FILE [--get NAME LABEL=VALUE...]')
    with open(args[0], encoding='utf-8') as f:
        samples = parse(f.read())
    if len(args) >= 3 and args[1] == '--get':
        want = dict(a.split('=', 1) for a in args[3:])
        for name, labels, value in samples:
            if name == args[2] and all(labels.get(k) == v for k, v in want.items()):
                print(int(value) if value.is_integer() else value)
                return
        sys.exit(f'prom-check: no sample {args[2]} {want}')
    print(f'{len(samples)} samples ok')


main()
