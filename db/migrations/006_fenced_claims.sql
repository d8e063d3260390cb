-- 006: fenced claims. Every claim of a call gets a token of its own (claim_token, from
-- claim_token_seq); every write of a claimed call names the token it holds, so a copy of the
-- call left in the memory of an instance that lost its claim can never write. An instance's
-- shares of a resource no longer vanish with its row: when another instance expires it, its
-- shares are held (held_until) for as long as its requests may still run, so the shares of
-- all instances, dead or alive, never add up to more than a resource's limit.
CREATE SEQUENCE claim_token_seq;
ALTER TABLE calls ADD COLUMN claim_token bigint;
ALTER TABLE instance_shares DROP CONSTRAINT IF EXISTS instance_shares_instance_fkey;
ALTER TABLE instance_shares ADD COLUMN held_until timestamptz;
