-- The totesys operational schema, as the real (Prisma-built) database has it.
-- Column order, types, nullability, foreign-key actions, enums and unique indexes follow
-- shared/reference/totesys-schema.md section 2; tests compare the created catalog against it.

CREATE TYPE "PaymentTypeName" AS ENUM ('SALES_RECEIPT', 'SALES_REFUND', 'PURCHASE_PAYMENT', 'PURCHASE_REFUND');
CREATE TYPE "TransactionType" AS ENUM ('SALE', 'PURCHASE');

CREATE TABLE _prisma_migrations (
    id                  varchar(36)  NOT NULL PRIMARY KEY,
    checksum            varchar(64)  NOT NULL,
    finished_at         timestamptz,
    migration_name      varchar(255) NOT NULL,
    logs                text,
    rolled_back_at      timestamptz,
    started_at          timestamptz  NOT NULL DEFAULT now(),
    applied_steps_count integer      NOT NULL DEFAULT 0
);

CREATE TABLE address (
    address_id     serial       NOT NULL,
    address_line_1 text         NOT NULL,
    address_line_2 text,
    district       text,
    city           text         NOT NULL,
    postal_code    text         NOT NULL,
    country        text         NOT NULL,
    phone          text         NOT NULL,
    created_at     timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated   timestamp(3) NOT NULL,
    CONSTRAINT address_pkey PRIMARY KEY (address_id)
);

CREATE TABLE counterparty (
    counterparty_id         serial       NOT NULL,
    counterparty_legal_name text         NOT NULL,
    legal_address_id        integer      NOT NULL,
    commercial_contact      text,
    delivery_contact        text,
    created_at              timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated            timestamp(3) NOT NULL,
    CONSTRAINT counterparty_pkey PRIMARY KEY (counterparty_id)
);

CREATE TABLE currency (
    currency_id   serial       NOT NULL,
    currency_code varchar(3)   NOT NULL,
    created_at    timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated  timestamp(3) NOT NULL,
    CONSTRAINT currency_pkey PRIMARY KEY (currency_id)
);

CREATE TABLE department (
    department_id   serial       NOT NULL,
    department_name text         NOT NULL,
    location        text,
    manager         text,
    created_at      timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated    timestamp(3) NOT NULL,
    CONSTRAINT department_pkey PRIMARY KEY (department_id)
);

CREATE TABLE design (
    design_id     serial       NOT NULL,
    created_at    timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    design_name   text         NOT NULL,
    file_location text         NOT NULL,
    file_name     text         NOT NULL,
    last_updated  timestamp(3) NOT NULL,
    CONSTRAINT design_pkey PRIMARY KEY (design_id)
);

CREATE TABLE staff (
    staff_id      serial       NOT NULL,
    first_name    text         NOT NULL,
    last_name     text         NOT NULL,
    department_id integer      NOT NULL,
    email_address text         NOT NULL,
    created_at    timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated  timestamp(3) NOT NULL,
    CONSTRAINT staff_pkey PRIMARY KEY (staff_id)
);

CREATE TABLE payment_type (
    payment_type_id   serial            NOT NULL,
    payment_type_name "PaymentTypeName" NOT NULL,
    created_at        timestamp(3)      NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated      timestamp(3)      NOT NULL,
    CONSTRAINT payment_type_pkey PRIMARY KEY (payment_type_id)
);

CREATE TABLE sales_order (
    sales_order_id              serial        NOT NULL,
    created_at                  timestamp(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated                timestamp(3)  NOT NULL,
    design_id                   integer       NOT NULL,
    staff_id                    integer       NOT NULL,
    counterparty_id             integer       NOT NULL,
    units_sold                  integer       NOT NULL,
    unit_price                  numeric(10,2) NOT NULL,
    currency_id                 integer       NOT NULL,
    agreed_delivery_date        text          NOT NULL,
    agreed_payment_date         text          NOT NULL,
    agreed_delivery_location_id integer       NOT NULL,
    CONSTRAINT sales_order_pkey PRIMARY KEY (sales_order_id)
);

CREATE TABLE purchase_order (
    purchase_order_id           serial        NOT NULL,
    created_at                  timestamp(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated                timestamp(3)  NOT NULL,
    staff_id                    integer       NOT NULL,
    counterparty_id             integer       NOT NULL,
    item_code                   text          NOT NULL,
    item_quantity               integer       NOT NULL,
    item_unit_price             numeric(10,2) NOT NULL,
    currency_id                 integer       NOT NULL,
    agreed_delivery_date        text          NOT NULL,
    agreed_payment_date         text          NOT NULL,
    agreed_delivery_location_id integer       NOT NULL,
    CONSTRAINT purchase_order_pkey PRIMARY KEY (purchase_order_id)
);

CREATE TABLE "transaction" (
    transaction_id    serial            NOT NULL,
    transaction_type  "TransactionType" NOT NULL,
    sales_order_id    integer,
    purchase_order_id integer,
    created_at        timestamp(3)      NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated      timestamp(3)      NOT NULL,
    CONSTRAINT transaction_pkey PRIMARY KEY (transaction_id)
);

CREATE TABLE payment (
    payment_id             serial        NOT NULL,
    created_at             timestamp(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated           timestamp(3)  NOT NULL,
    transaction_id         integer       NOT NULL,
    counterparty_id        integer       NOT NULL,
    payment_amount         numeric(10,2) NOT NULL,
    currency_id            integer       NOT NULL,
    payment_type_id        integer       NOT NULL,
    paid                   boolean       NOT NULL,
    payment_date           text          NOT NULL,
    company_ac_number      integer       NOT NULL,
    counterparty_ac_number integer       NOT NULL,
    CONSTRAINT payment_pkey PRIMARY KEY (payment_id)
);

CREATE UNIQUE INDEX payment_transaction_id_key ON payment (transaction_id);
CREATE UNIQUE INDEX transaction_sales_order_id_key ON "transaction" (sales_order_id);
CREATE UNIQUE INDEX transaction_purchase_order_id_key ON "transaction" (purchase_order_id);

ALTER TABLE counterparty ADD CONSTRAINT counterparty_legal_address_id_fkey
    FOREIGN KEY (legal_address_id) REFERENCES address (address_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE staff ADD CONSTRAINT staff_department_id_fkey
    FOREIGN KEY (department_id) REFERENCES department (department_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE sales_order ADD CONSTRAINT sales_order_design_id_fkey
    FOREIGN KEY (design_id) REFERENCES design (design_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE sales_order ADD CONSTRAINT sales_order_staff_id_fkey
    FOREIGN KEY (staff_id) REFERENCES staff (staff_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE sales_order ADD CONSTRAINT sales_order_counterparty_id_fkey
    FOREIGN KEY (counterparty_id) REFERENCES counterparty (counterparty_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE sales_order ADD CONSTRAINT sales_order_currency_id_fkey
    FOREIGN KEY (currency_id) REFERENCES currency (currency_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE sales_order ADD CONSTRAINT sales_order_agreed_delivery_location_id_fkey
    FOREIGN KEY (agreed_delivery_location_id) REFERENCES address (address_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE purchase_order ADD CONSTRAINT purchase_order_staff_id_fkey
    FOREIGN KEY (staff_id) REFERENCES staff (staff_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE purchase_order ADD CONSTRAINT purchase_order_counterparty_id_fkey
    FOREIGN KEY (counterparty_id) REFERENCES counterparty (counterparty_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE purchase_order ADD CONSTRAINT purchase_order_currency_id_fkey
    FOREIGN KEY (currency_id) REFERENCES currency (currency_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE purchase_order ADD CONSTRAINT purchase_order_agreed_delivery_location_id_fkey
    FOREIGN KEY (agreed_delivery_location_id) REFERENCES address (address_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE "transaction" ADD CONSTRAINT transaction_sales_order_id_fkey
    FOREIGN KEY (sales_order_id) REFERENCES sales_order (sales_order_id) ON UPDATE CASCADE ON DELETE SET NULL;
ALTER TABLE "transaction" ADD CONSTRAINT transaction_purchase_order_id_fkey
    FOREIGN KEY (purchase_order_id) REFERENCES purchase_order (purchase_order_id) ON UPDATE CASCADE ON DELETE SET NULL;
ALTER TABLE payment ADD CONSTRAINT payment_transaction_id_fkey
    FOREIGN KEY (transaction_id) REFERENCES "transaction" (transaction_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE payment ADD CONSTRAINT payment_counterparty_id_fkey
    FOREIGN KEY (counterparty_id) REFERENCES counterparty (counterparty_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE payment ADD CONSTRAINT payment_currency_id_fkey
    FOREIGN KEY (currency_id) REFERENCES currency (currency_id) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE payment ADD CONSTRAINT payment_payment_type_id_fkey
    FOREIGN KEY (payment_type_id) REFERENCES payment_type (payment_type_id) ON UPDATE CASCADE ON DELETE RESTRICT;
