"""Pack the training JPEGs of an ImageFolder into one file: JSON index line, then the bytes."""
import json, os, sys
root, out = sys.argv[1], sys.argv[2]
entries, blobs = [], []
for cls in sorted(os.listdir(os.path.join(root, "train"))):
    for name in sorted(os.listdir(os.path.join(root, "train", cls))):
        data = open(os.path.join(root, "train", cls, name), "rb").read()
        entries.append([f"train/{cls}/{name}", len(data)])
        blobs.append(data)
with open(out, "wb") as f:
    f.write((json.dumps(entries) + "\n").encode())
    for b in blobs:
        f.write(b)
print(len(entries), "files")
