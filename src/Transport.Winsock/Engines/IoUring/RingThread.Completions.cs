namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// A ring thread's submissions and completions: the table of operations completions are dispatched by
/// (user_data: index and generation), the submission entries, and the reaping, with what a full queue
/// made the thread copy aside dispatched first.
/// </summary>
internal sealed unsafe partial class RingThread
{
    /// <summary>
    /// Gives an operation its index in the table completions are dispatched by, and the generation its
    /// submissions go on from: an index given again goes on from its last operation's, so no user_data of
    /// the new operation is one its predecessor used (a resync's suspect of the old one never matches it).
    /// </summary>
    public int Register(RingOperation operation, out uint generation)
    {
        lock (_registerLock)
        {
            if (_freeIndexes.TryPop(out var free))
            {
                _operations[free.Index] = operation;
                generation = free.Generation;
                return free.Index;
            }

            generation = 0;
            var index = _registered++;
            if (index >= _operations.Length)
            {
                var grown = new RingOperation?[_operations.Length * 2];
                _operations.CopyTo(grown, 0);
                Volatile.Write(ref _operations, grown);
            }

            _operations[index] = operation;
            return index;
        }
    }

    /// <summary>
    /// Frees an operation's index for a later one: its object is done, with nothing in flight (its
    /// connection or listener is done), so no completion can still come for it. A retired operation's
    /// index is never freed: its completion may come yet, and must not reach another operation.
    /// </summary>
    public void Unregister(RingOperation operation)
    {
        lock (_registerLock)
        {
            if (!operation.Retired && ReferenceEquals(_operations[operation.Index], operation))
            {
                _operations[operation.Index] = null;
                _freeIndexes.Push((operation.Index, operation.Generation));
            }
        }
    }

    /// <summary>
    /// On the ring thread: a zeroed submission entry, after submitting what is queued if the queue is full;
    /// null when the ring is stopping. Never runs completions.
    /// </summary>
    public Sqe* TryGetSqe() => _stopping || Volatile.Read(ref _done) != 0 ? null : NextSqe();

    private Sqe* NextSqe()
    {
        var sqe = _ring!.TryGetSqe();
        while (sqe is null)
        {
            var result = _ring.Enter(wait: false);
            if (result == -LinuxNative.EBADR)
            {
                OnDropReported();
            }
            else if (result < 0 && result != -LinuxNative.EBUSY && result != -LinuxNative.EAGAIN)
            {
                throw new IOException($"io_uring_enter failed: {LinuxNative.ErrnoName(-result)}.");
            }

            // Completions are copied aside (dispatched by the loop) after every submission here, so that what
            // the entries just submitted post can never add up, batch after batch, in the completion queue
            // (see RingCapacity), and a full queue (EBUSY, EAGAIN) gets its room.
            Defer();
            sqe = _ring.TryGetSqe();
        }

        return sqe;
    }

    private void Defer()
    {
        while (_ring!.TryPeek(out var cqe))
        {
            _ring.Advance();
            _deferred.Enqueue(cqe);
        }
    }

    /// <summary>Counts a submission in flight (see <see cref="RingOperation"/>).</summary>
    public void OnSubmitted() => _inFlight++;

    /// <summary>On the ring thread: a counted submission that never reached the kernel (tests make such).</summary>
    internal void OnAbandoned() => _inFlight--;

    /// <summary>On the ring thread: cancels the submission with <paramref name="userData"/>, if still in flight.</summary>
    public void Cancel(ulong userData)
    {
        var sqe = TryGetSqe();
        if (sqe is null)
        {
            return;
        }

        sqe->Opcode = CancelFault ? RingConstants.OpNop : RingConstants.OpAsyncCancel;
        sqe->Fd = -1;
        sqe->Addr = userData;
        sqe->UserData = IgnoredUserData;
        sqe->Flags = RingConstants.SqeCqeSkipSuccess;
    }

    /// <summary>Dispatches what was set aside, then what is in the completion queue; how many there were.</summary>
    private int Reap()
    {
        var count = 0;
        while (_deferred.TryDequeue(out var deferred))
        {
            Dispatch(deferred);
            count++;
        }

        while (_ring!.TryPeek(out var cqe))
        {
            _ring.Advance();
            Dispatch(cqe);
            count++;
        }

        return count;
    }

    private void Dispatch(in Cqe cqe)
    {
        var low = (uint)cqe.UserData;
        if ((low & ResyncBit) != 0)
        {
            OnResyncAnswer(cqe.UserData & ~(ulong)ResyncBit, cqe.Res);
            return;
        }

        if (low == WakeIndex)
        {
            if (cqe.UserData == WakeUserData)
            {
                _wakeArmed = false;
                _wakeSerial++;
            }

            return;
        }

        if (low == BarrierIndex)
        {
            OnResyncBarrier();
            return;
        }

        var index = (int)low;
        if (index < FirstIndex)
        {
            return;
        }

        // Read for every completion: the table may have grown under an earlier one's continuation.
        var operations = Volatile.Read(ref _operations);
        if (DropFault is { } drop && index < operations.Length && operations[index] is { } target && drop(target, cqe.Res))
        {
            // The seam: the kernel dropped this completion, and says so at the next enter (EBADR).
            _dropInjected = true;
            return;
        }

        if (index < operations.Length && operations[index]?.OnCompletion(cqe.UserData, cqe.Res, cqe.Flags) == true)
        {
            _inFlight--;
        }
    }
}
