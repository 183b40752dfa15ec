# grpo-session: GRPO: every session of the recipe, from the newest checkpoint (grpo/).
# Build: docker build -f images/base.Dockerfile -t showwork-base . &&
#        docker build -f images/grpo-session.Dockerfile --build-arg BASE=showwork-base -t showwork-grpo-session .
ARG BASE=showwork-base
FROM ${BASE}
ENTRYPOINT ["python", "-m", "jobs.grpo_session"]
