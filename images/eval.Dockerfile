# eval: Evaluation shards (JOB_COMPLETION_INDEX) and, with `python -m jobs.report`, the report.
# Build: docker build -f images/base.Dockerfile -t showwork-base . &&
#        docker build -f images/eval.Dockerfile --build-arg BASE=showwork-base -t showwork-eval .
ARG BASE=showwork-base
FROM ${BASE}
ENTRYPOINT ["python", "-m", "jobs.evaluate"]
