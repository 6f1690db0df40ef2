#!/usr/bin/env bash
# The house refactor (issue 10) must not cost throughput: the README's 16-layer InternLM-7B program,
# before (a copy of commit 28e6055 in .oldtree/) and after (this tree), in one device call.
#   here:   mkdir .oldtree && git archive 28e6055 internlm conf | tar -x -C .oldtree
#           (.whl/ holds hydra-core, omegaconf and antlr4 wheels: the GPU machine has no hydra)
#   device: bash bench/house_parity.sh          (carry: .whl .oldtree)
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/hydra_core-*.whl .whl/omegaconf-*.whl .whl/antlr4*.whl || exit 9
nvidia-smi --query-gpu=name --format=csv,noheader
O="model=internlm_7b model.num_layers=16 data.seq_len=4096 data.global_batch_size=4 loss=chunked optimizer.lr=1e-4 trainer.max_steps=16 trainer.log_every=1 trainer.val_every=0 trainer.checkpoint_every=-1 trainer.sample_tokens=0 trainer.loggers=[csv] trainer.progress_bar=false"
root=$PWD
for which in old new; do
  if [ $which = old ]; then cd $root/.oldtree; else cd $root; fi
  PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 timeout 280 python3 -m internlm $O hydra.run.dir=$OUT/$which > $OUT/$which.log 2>&1; echo "$which rc=$?"
  tail -3 $OUT/$which.log
  cd $root; python3 bench/summarize_run.py $OUT/$which --skip 4
done
