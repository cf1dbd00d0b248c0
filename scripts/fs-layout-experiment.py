#!/usr/bin/env python3
"""Replays the file-system work of `p2pfs vault import` of 10,000 small files
in one vault layout, to see what a layout change would buy (docs/PERFORMANCE.md,
*Vault layout*). Not a benchmark of p2pfs: no crypto, only the creates,
writes, renames and syncs, on two threads as the import does them.

    python3 scripts/fs-layout-experiment.py flat|single|shard|shard_gstage DIR

flat: two files per object (`<id>.obj`, `<id>.env`) in one objects/;
single: one file per object (`<id>.one`, what objects of one chunk are
since vault format 2); shard: two files, in 256 subdirectories of
objects/; shard_gstage: those, plus one staging folder per group of 256.
DIR is removed first.
"""
import os, sys, threading, queue, time, shutil
mode = sys.argv[1]; root = sys.argv[2]; N = 10000
if os.path.exists(root): shutil.rmtree(root)
os.makedirs(root+"/staging"); os.makedirs(root+"/objects")
if mode in ("shard","shard_gstage"):
    for i in range(256): os.mkdir(f"{root}/objects/{i:02x}")
data = os.urandom(4096+64)
q = queue.Queue(maxsize=64)
def stager():
    for g in range(N//256+1):
        sd = f"{root}/staging" + (f"/g{g}" if mode=="shard_gstage" else "")
        if mode=="shard_gstage": os.mkdir(sd)
        batch=[]
        for i in range(g*256, min(N,(g+1)*256)):
            h = os.urandom(16).hex()
            for ext,d in ((("obj",data),("env",data[:200])) if mode!="single" else (("sob",data+data[:200]),)):
                fd = os.open(f"{sd}/{h}.{ext}.tmp", os.O_CREAT|os.O_WRONLY|os.O_EXCL, 0o600)
                os.write(fd,d); os.close(fd)
            batch.append((sd,h))
        q.put(batch)
    q.put(None)
def committer():
    while True:
        b=q.get()
        if b is None: break
        for sd,h in b:
            dst = f"{root}/objects/{h[:2]}" if mode!="flat" else f"{root}/objects"
            for ext in (("obj","env") if mode!="single" else ("sob",)):
                os.rename(f"{sd}/{h}.{ext}.tmp", f"{dst}/{h}.{ext}")
        if mode=="shard_gstage": os.rmdir(b[0][0])
        fd=os.open(root, os.O_RDONLY); os.syncfs(fd) if hasattr(os,'syncfs') else os.sync(); os.close(fd)
t0=time.time()
a=threading.Thread(target=stager); b=threading.Thread(target=committer); a.start(); b.start(); a.join(); b.join()
os.sync()
print(mode, f"{N/(time.time()-t0):.0f} files/s")
