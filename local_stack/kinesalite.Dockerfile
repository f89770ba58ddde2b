# kinesalite, the local Kinesis endpoint, for docker-compose.yml: installed at build time
# from package-lock.json (the same pin as `make install`), so nothing is downloaded when the
# container starts. Node 20, as kinesalite 3.3.3 is known to run on.
FROM node:20-slim
WORKDIR /srv
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error \
    && mkdir /data && chown node /data
USER node
EXPOSE 4567
ENTRYPOINT ["node", "/srv/node_modules/kinesalite/cli.js"]
CMD ["--port", "4567", "--path", "/data", "--shardLimit", "200", "--createStreamMs", "50"]
