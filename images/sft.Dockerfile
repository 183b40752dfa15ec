# sft: SFT: full or LoRA fine-tuning onto the bus (sft/).
# Build: docker build -f images/base.Dockerfile -t showwork-base . &&
#        docker build -f images/sft.Dockerfile --build-arg BASE=showwork-base -t showwork-sft .
ARG BASE=showwork-base
FROM ${BASE}
ENTRYPOINT ["python", "-m", "jobs.sft"]
