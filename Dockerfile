# CPU image for the API (and for CPU-only workers). The api package never imports torch, but the project
# depends on it, so the small CPU build of torch is installed first from PyTorch's CPU index.
FROM python:3.12-slim

ARG TORCH_SPEC="torch==2.7.1"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/cdp

RUN pip install --index-url https://download.pytorch.org/whl/cpu "${TORCH_SPEC}" \
    && python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/keep-cpu-torch.txt

# Dependencies from pyproject.toml alone (a layer rebuilt only when it changes), then the source, installed
# without dependencies.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install --constraint /tmp/keep-cpu-torch.txt --requirement /tmp/requirements.txt

COPY README.md ./
COPY core ./core
COPY api ./api
COPY worker ./worker
RUN pip install --no-deps --constraint /tmp/keep-cpu-torch.txt .

RUN useradd --create-home --uid 10001 cdp \
    && mkdir -p /srv/cdp/var/models /srv/cdp/var/data /srv/cdp/var/work \
    && chown -R cdp:cdp /srv/cdp/var
USER cdp
EXPOSE 8000

CMD ["uvicorn", "--factory", "api.app:create_app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
