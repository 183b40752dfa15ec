# data-prep: cleans, splits and formats a recipe's data onto the bus (data/).
# Build: docker build -f images/base.Dockerfile -t showwork-base . &&
#        docker build -f images/data-prep.Dockerfile --build-arg BASE=showwork-base -t showwork-data-prep .
ARG BASE=showwork-base
FROM ${BASE}
ENTRYPOINT ["python", "-m", "jobs.prepare_data"]
