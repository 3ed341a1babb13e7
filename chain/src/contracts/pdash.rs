//! PDash / private trade contract: the eight-step flow of the built-in private contract.
//!
//! 1. the seller lists an item (name, data id, price, description, agent P) — `ListItem`;
//! 2. the buyer browses listings (a read: `State::item`);
//! 3. the buyer pays into escrow — `EscrowDeposit`;
//! 4. the buyer orders with its public key, locking the price from escrow — `PlaceOrder`;
//! 5. the seller sees the order and the locked price (a read: `State::order`);
//! 6. the seller confirms with the data key sealed to the buyer — `SellerConfirm`;
//! 7. the buyer opens the key and confirms — `BuyerConfirm`;
//! 8. the agent releases the escrowed price to the seller — `AgentRelease`.
//!
//! Side paths: the buyer may `CancelOrder` before step 6 (price back to escrow) or `Dispute`
//! instead of step 7; the agent then `AgentResolve`s by refunding the buyer's escrow or
//! paying the seller. Every step checks the caller's role and the order state and appends
//! (new state, height, caller) to the order's audit trail. Settling as agent counts as proxy
//! work for the agent's RPT (PR).

use crypto_accel::DataId;

use crate::error::{ChainError, ChainResult};
use crate::state::exec::{bump, credit, debit, meta, set_meta, Ctx};
use crate::state::records::{Funds, Listing, Order, OrderState, MAX_ORDER_HISTORY};
use crate::state::table::{DataTable, Escrow, Items, Orders, Store};
use crate::state::TxOutcome;
use crate::types::{Address, Amount};

#[allow(clippy::too_many_arguments)]
pub(crate) fn list<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    name: &str,
    data: DataId,
    price: Amount,
    description: &str,
    agent: Address,
) -> ChainResult<TxOutcome> {
    let d = s
        .get::<DataTable>(&data)
        .ok_or(ChainError::UnknownData { id: data })?;
    if d.owner != from {
        return Err(ChainError::NotOwner {
            caller: from,
            function: "list_item",
        });
    }
    if price == 0 {
        return Err(ChainError::ZeroAmount { what: "price" });
    }
    let mut m = meta(s);
    let item = m.next_item;
    m.next_item = item
        .checked_add(1)
        .ok_or(ChainError::Overflow { what: "item id" })?;
    set_meta(s, m);
    s.set::<Items>(
        item,
        Listing {
            seller: from,
            name: name.to_owned(),
            data,
            price,
            description: description.to_owned(),
            agent,
            delisted: false,
            listed_at: cx.height,
        },
    );
    Ok(TxOutcome::Listed { item })
}

pub(crate) fn delist<S: Store>(s: &mut S, from: Address, item: u64) -> ChainResult<()> {
    let mut l = s
        .get::<Items>(&item)
        .ok_or(ChainError::UnknownItem { item })?;
    if l.seller != from {
        return Err(ChainError::NotOwner {
            caller: from,
            function: "delist_item",
        });
    }
    if l.delisted {
        return Err(ChainError::ItemDelisted { item });
    }
    l.delisted = true;
    s.set::<Items>(item, l);
    Ok(())
}

pub(crate) fn escrow_deposit<S: Store>(
    s: &mut S,
    from: Address,
    amount: Amount,
) -> ChainResult<()> {
    if amount == 0 {
        return Err(ChainError::ZeroAmount {
            what: "escrow deposit",
        });
    }
    let old = s.get::<Escrow>(&from).unwrap_or_default().0;
    let new = old
        .checked_add(amount)
        .ok_or(ChainError::Overflow { what: "escrow" })?;
    debit(s, from, amount)?;
    s.set::<Escrow>(from, Funds(new));
    Ok(())
}

pub(crate) fn escrow_withdraw<S: Store>(
    s: &mut S,
    from: Address,
    amount: Amount,
) -> ChainResult<()> {
    if amount == 0 {
        return Err(ChainError::ZeroAmount {
            what: "escrow withdrawal",
        });
    }
    let old = s.get::<Escrow>(&from).unwrap_or_default().0;
    let left = old
        .checked_sub(amount)
        .ok_or(ChainError::InsufficientBalance {
            need: amount,
            have: old,
        })?;
    set_escrow(s, from, left);
    credit(s, from, amount)
}

fn set_escrow<S: Store>(s: &mut S, addr: Address, amount: Amount) {
    if amount == 0 {
        s.del::<Escrow>(&addr);
    } else {
        s.set::<Escrow>(addr, Funds(amount));
    }
}

fn refund_escrow<S: Store>(s: &mut S, addr: Address, amount: Amount) -> ChainResult<()> {
    let old = s.get::<Escrow>(&addr).unwrap_or_default().0;
    let new = old
        .checked_add(amount)
        .ok_or(ChainError::Overflow { what: "escrow" })?;
    set_escrow(s, addr, new);
    Ok(())
}

pub(crate) fn place_order<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    item: u64,
    buyer_key: [u8; 32],
) -> ChainResult<TxOutcome> {
    let l = s
        .get::<Items>(&item)
        .ok_or(ChainError::UnknownItem { item })?;
    if l.delisted {
        return Err(ChainError::ItemDelisted { item });
    }
    let have = s.get::<Escrow>(&from).unwrap_or_default().0;
    let left = have
        .checked_sub(l.price)
        .ok_or(ChainError::InsufficientBalance {
            need: l.price,
            have,
        })?;
    let mut m = meta(s);
    let order = m.next_order;
    m.next_order = order
        .checked_add(1)
        .ok_or(ChainError::Overflow { what: "order id" })?;
    set_meta(s, m);
    set_escrow(s, from, left);
    s.set::<Orders>(
        order,
        Order {
            item,
            buyer: from,
            seller: l.seller,
            agent: l.agent,
            price: l.price,
            buyer_key,
            sealed_key: Vec::new(),
            state: OrderState::Ordered,
            history: vec![(OrderState::Ordered, cx.height, from)],
        },
    );
    Ok(TxOutcome::Ordered { order })
}

/// Loads order `id`, checks the caller's role and the expected state.
fn step<S: Store>(
    s: &S,
    from: Address,
    id: u64,
    role: &'static str,
    expect: OrderState,
    step: &'static str,
) -> ChainResult<Order> {
    let o = s
        .get::<Orders>(&id)
        .ok_or(ChainError::UnknownOrder { order: id })?;
    let party = match role {
        "buyer" => o.buyer,
        "seller" => o.seller,
        _ => o.agent,
    };
    if from != party {
        return Err(ChainError::WrongParty {
            caller: from,
            role,
            order: id,
        });
    }
    if o.state != expect {
        return Err(ChainError::BadOrderState {
            order: id,
            state: o.state.name(),
            step,
        });
    }
    Ok(o)
}

fn advance<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    id: u64,
    mut o: Order,
    to: OrderState,
) {
    o.state = to;
    if o.history.len() < MAX_ORDER_HISTORY {
        o.history.push((to, cx.height, from));
    }
    s.set::<Orders>(id, o);
}

pub(crate) fn cancel<S: Store>(s: &mut S, cx: &Ctx<'_>, from: Address, id: u64) -> ChainResult<()> {
    let o = step(s, from, id, "buyer", OrderState::Ordered, "cancel")?;
    refund_escrow(s, o.buyer, o.price)?;
    advance(s, cx, from, id, o, OrderState::Cancelled);
    Ok(())
}

pub(crate) fn seller_confirm<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    id: u64,
    sealed_key: &[u8],
) -> ChainResult<()> {
    let mut o = step(
        s,
        from,
        id,
        "seller",
        OrderState::Ordered,
        "confirm as seller",
    )?;
    if sealed_key.is_empty() {
        return Err(ChainError::InvalidData {
            reason: "empty sealed key",
        });
    }
    o.sealed_key = sealed_key.to_vec();
    advance(s, cx, from, id, o, OrderState::SellerConfirmed);
    Ok(())
}

pub(crate) fn buyer_confirm<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    id: u64,
) -> ChainResult<()> {
    let o = step(
        s,
        from,
        id,
        "buyer",
        OrderState::SellerConfirmed,
        "confirm as buyer",
    )?;
    advance(s, cx, from, id, o, OrderState::BuyerConfirmed);
    Ok(())
}

pub(crate) fn agent_release<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    id: u64,
) -> ChainResult<()> {
    let o = step(s, from, id, "agent", OrderState::BuyerConfirmed, "release")?;
    credit(s, o.seller, o.price)?;
    bump(s, from, cx.height, |a| a.proxy = a.proxy.saturating_add(1));
    advance(s, cx, from, id, o, OrderState::Released);
    Ok(())
}

pub(crate) fn dispute<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    id: u64,
) -> ChainResult<()> {
    let o = step(s, from, id, "buyer", OrderState::SellerConfirmed, "dispute")?;
    advance(s, cx, from, id, o, OrderState::Disputed);
    Ok(())
}

pub(crate) fn agent_resolve<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    id: u64,
    refund: bool,
) -> ChainResult<()> {
    let o = step(s, from, id, "agent", OrderState::Disputed, "resolve")?;
    let to = if refund {
        refund_escrow(s, o.buyer, o.price)?;
        OrderState::Refunded
    } else {
        credit(s, o.seller, o.price)?;
        OrderState::Released
    };
    bump(s, from, cx.height, |a| a.proxy = a.proxy.saturating_add(1));
    advance(s, cx, from, id, o, to);
    Ok(())
}
