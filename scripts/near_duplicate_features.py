"""Does a second pass on the pretrained backbone's pooled features earn its cost? Cosine similarity of Lite0
features for the copy pairs the hashes miss, against distinct real images, and the cost in images/s. Prints text;
docs/data_checks.md has the figures ("A second pass on backbone features?").

    OMP_NUM_THREADS=1 python scripts/near_duplicate_features.py
"""
# ruff: noqa: E401, E402, E702, E231, E741
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's pipeline, not an installed one
from pipeline.config import load_config
from pipeline.data.datasets import quantize
from pipeline.data.near_duplicates import distances, hamming, image_hashes
from pipeline.data.transforms import load_transforms
from pipeline.demo import make_demo
from pipeline.model.models import build_model
from pipeline.tools.near_copies import COPIES, _as_8bit, real_sources, write_copy

torch.set_num_threads(1)
sh=Path(__file__).resolve().parents[3] / 'shared' / 'data'; tmp=Path(tempfile.mkdtemp())
demo=make_demo(tmp/'demo', which=('chest_xray',), n_scale=0.25)['chest_xray']
src=[s for s in real_sources(sh/'busi', sh/'nih_cxr', demo, n_busi=15, n_nih_patients=12, n_demo=0)]
cfg=load_config('chest_xray',['data.demo=null']); chain=load_transforms(cfg.data)
imgs=[];origin=[];kind=[];ds=[];pat=[]
for k,s in enumerate(src):
  img=_as_8bit(s.path); paths=[s.path]+[write_copy(img,n,tmp/f'{k}_{n}') for n in COPIES]
  for pi,p in enumerate(paths):
    imgs.append(quantize(chain({'image':str(p),'frame':None})['image'])); origin.append(k); kind.append(pi); ds.append(s.dataset); pat.append(s.patient)
H=np.stack([image_hashes(a) for a in imgs])
bm=build_model(cfg.model, 2); m=bm.model.eval()
x=torch.stack([torch.from_numpy(a.astype(np.float32)/65535) for a in imgs])
x=(x-bm.norm.mean[0])/bm.norm.std[0]
t0=time.perf_counter()
with torch.no_grad():
  F=torch.cat([m.forward_head(m.forward_features(x[i:i+32]), pre_logits=True) for i in range(0,len(x),32)]).numpy()
rate=len(x)/(time.perf_counter()-t0)
F=F/np.linalg.norm(F,axis=1,keepdims=True)
origin=np.array(origin);kind=np.array(kind); pat=np.array([p or f'u{i}' for i,p in enumerate(pat)],dtype=object)
iu,ju=np.triu_indices(len(imgs),1); same=origin[iu]==origin[ju]; toorig=same&((kind[iu]==0)|(kind[ju]==0))
dp,dd=distances(H[iu],H[ju]); d64=hamming(H[iu,0],H[ju,0]); hashhit=(d64<=10)&(np.maximum(dp,dd)<=48)
cos=(F[iu]*F[ju]).sum(1)
missed=toorig&~hashhit
diffsrc=~same
print('images',len(imgs),'features img/s (128px, 1 thread)',round(rate,1),'hash recall',round(hashhit[toorig].mean(),3),'missed',missed.sum())
for t in (0.9,0.95,0.97,0.98,0.99):
  print('cos>=',t,'recall of hash-missed copies',round((cos[missed]>=t).mean(),3),'distinct real pairs joined',int(((cos>=t)&diffsrc).sum()),'of',int(diffsrc.sum()))
print('per copy missed, cos quantiles', {c:(np.round(np.quantile(cos[missed&(np.maximum(kind[iu],kind[ju])==i+1)],[0.1,0.5]),3).tolist() if (missed&(np.maximum(kind[iu],kind[ju])==i+1)).any() else None) for i,c in enumerate(COPIES)})
print('distinct pairs cos quantiles 99.9%, max', np.quantile(cos[diffsrc],0.999).round(4), cos[diffsrc].max().round(4))
