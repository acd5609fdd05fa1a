# Random permutations and rotations/reflections of DW-4 training samples (the paper's "data
# augmentation" for the non-equivariant baseline, docs/field_families.md): the first 1000
# samples of IN, each in K random copies, followed by the next 1000 samples unchanged (the
# validation part). Usage: python3 dw4_augment.py K IN.npy OUT.npy (float64 (n, 8) input,
# no numpy needed).
import struct, math, random, sys
K = int(sys.argv[1]); src = sys.argv[2]; out = sys.argv[3]
raw = open(src, 'rb').read()
hl = struct.unpack('<H', raw[8:10])[0]
assert b"'<f8'" in raw[10:10 + hl] and b"False" in raw[10:10 + hl], "need C-order float64"
data = raw[10 + hl:]
vals = struct.unpack('<%dd' % (len(data) // 8), data)
rows = [vals[i * 8:(i + 1) * 8] for i in range(len(vals) // 8)]
rng = random.Random(12345)
aug = []
for r in rows[:1000]:
    for _ in range(K):
        perm = list(range(4)); rng.shuffle(perm)
        th = rng.uniform(0, 2 * math.pi); c, s = math.cos(th), math.sin(th)
        refl = rng.random() < 0.5
        y = []
        for p in perm:
            x0, x1 = r[2 * p], r[2 * p + 1]
            if refl: x1 = -x1
            y += [c * x0 - s * x1, s * x0 + c * x1]
        aug.append(y)
allrows = aug + [list(r) for r in rows[1000:2000]]
header = "{'descr': '<f8', 'fortran_order': False, 'shape': (%d, 8), }" % len(allrows)
pad = 64 - (10 + len(header) + 1) % 64
header = header + ' ' * pad + '\n'
with open(out, 'wb') as f:
    f.write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(header)) + header.encode())
    for y in allrows: f.write(struct.pack('<8d', *y))
