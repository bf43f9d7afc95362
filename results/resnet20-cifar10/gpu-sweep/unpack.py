import json, os, sys
pack, root = sys.argv[1], sys.argv[2]
with open(pack, "rb") as f:
    entries = json.loads(f.readline())
    for rel, size in entries:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as g:
            g.write(f.read(size))
print(len(entries), "files unpacked into", root)
