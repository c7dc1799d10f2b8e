using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;

namespace Transport.Winsock.Connections;

/// <summary>
/// A connection's input: the connection's receive loop writes into it and the application reads it (it
/// is the <see cref="PipeReader"/> of <c>Transport.Input</c>). It behaves as a <see cref="Pipe"/> with
/// the same <see cref="PipeOptions"/> would for those two users: a read waits for bytes it has not
/// examined yet; backpressure counts what the reader has not examined (so a reader that examines without
/// consuming, waiting for more, cannot stall the writer); the reader's continuations run on the options'
/// ReaderScheduler, the flush's on its WriterScheduler; the writer's error is thrown to every read after
/// it. It is one object, and once the application has consumed everything it holds no memory and no
/// segment, unless a receive is writing into its memory.
/// </summary>
/// <remarks>
/// The writer side is the receive loop's alone. Memory it was given (a receive may be in the kernel) is
/// never returned until it has flushed or completed: the reader only returns what it consumed, and the
/// segment being written stays.
/// </remarks>
internal sealed class InputPipe : PipeReader, IValueTaskSource<ReadResult>, IValueTaskSource<FlushResult>
{
    private static readonly Action<object?> s_cancelRead = static state => ((InputPipe)state!).OnReadTokenCanceled();

    private readonly PipeOptions _options;
    // The connection's one lock, shared with its output pipe and its close (one object a connection, not three).
    private readonly Lock _lock;

    // The unconsumed bytes and the writer's place after them. Positions count from the connection's first byte.
    private PipeSegmentList _segments;
    // Every byte flushed so far; where the next first segment starts once all were consumed.
    private long _committed;
    private long _examined;
    // Flushed bytes the reader has not examined yet, or an end it has not seen: a read returns at once.
    private bool _readable;

    private bool _writerCompleted;
    private bool _readerCompleted;
    private Exception? _writerError;
    private bool _readCancelRequested;
    private bool _flushCancelRequested;

    private PipeWaiter _read;
    private PipeWaiter _flush;
    private PipeCancellation _readCancellation;

    public InputPipe(PipeOptions options, Lock? gate = null)
    {
        _options = options;
        _lock = gate ?? new Lock();
    }

    // ---- The reader: the application ----

    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled<ReadResult>(cancellationToken);
        }

        lock (_lock)
        {
            ThrowIfReaderCompleted();
            if (_read.IsWaiting)
            {
                throw new InvalidOperationException("Concurrent reads are not supported: the previous read has not completed.");
            }

            if (_readable || _readCancelRequested || _writerCompleted)
            {
                return new(GetReadResultLocked());
            }

            _read.Begin();
            _readCancellation.Register(s_cancelRead, this, cancellationToken);
            return new(this, _read.Token);
        }
    }

    public override bool TryRead(out ReadResult result)
    {
        lock (_lock)
        {
            ThrowIfReaderCompleted();
            if (_readable || _readCancelRequested || _writerCompleted)
            {
                result = GetReadResultLocked();
                return true;
            }

            result = default;
            return false;
        }
    }

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        PipeWaiter wake = default;
        lock (_lock)
        {
            ThrowIfReaderCompleted();
            var start = HeadPosition;
            var end = _committed;
            var consumedAt = Position(consumed, start);
            var examinedAt = Position(examined, start);
            if (consumedAt < start || consumedAt > examinedAt || examinedAt > end || !IsUnconsumed(consumed.GetObject()))
            {
                // Refused before anything changes, with the exception a Pipe throws (the one Kestrel handles).
                throw new InvalidOperationException("The consumed and examined positions must lie in the last buffer read, consumed no later than examined.");
            }

            if (examinedAt > _examined)
            {
                _examined = examinedAt;
            }

            if (examinedAt == end && !_writerCompleted)
            {
                // All of it examined: the next read waits for more.
                _readable = false;
            }

            Consume((PipeSegment?)consumed.GetObject(), consumedAt);
            if (_flush.IsWaiting && _committed - _examined < _options.ResumeWriterThreshold)
            {
                wake = _flush.Complete();
            }
        }

        wake.Run(_options.WriterScheduler);
    }

    public override void CancelPendingRead() => PipeWaiter.CancelPending(_lock, ref _read, ref _readCancelRequested, _options.ReaderScheduler);

    public override void Complete(Exception? exception = null)
    {
        PipeWaiter wake = default;
        lock (_lock)
        {
            if (_readerCompleted)
            {
                return;
            }

            _readerCompleted = true;
            if (_writerCompleted)
            {
                ReturnAllLocked();
            }

            if (_flush.IsWaiting)
            {
                wake = _flush.Complete();
            }
        }

        wake.Run(_options.WriterScheduler);
    }

    private long HeadPosition => _segments.Head is { } head ? head.RunningIndex + _segments.HeadIndex : _committed;

    /// <summary>A position of the last buffer read as a count from the first byte; the buffer's own start when it was empty.</summary>
    private static long Position(SequencePosition position, long start)
    {
        if (position.GetObject() is not PipeSegment segment)
        {
            return position.GetObject() is null ? start : throw new InvalidOperationException("The position is not one of this pipe's.");
        }

        return segment.RunningIndex + position.GetInteger();
    }

    /// <summary>Whether a position's segment is one of the unconsumed ones (null: an empty buffer's).</summary>
    private bool IsUnconsumed(object? segment) => segment is null || _segments.Contains(segment);

    private void Consume(PipeSegment? consumedSegment, long consumedAt)
    {
        if (consumedSegment is null || _segments.Head is null)
        {
            return;
        }

        _segments.ConsumeTo(consumedSegment, (int)(consumedAt - consumedSegment.RunningIndex));
        // All consumed and no receive writing: hold no memory while idle.
        _segments.ReleaseIfIdle();
    }

    private ReadResult GetReadResultLocked()
    {
        if (_writerCompleted && _writerError is { } error)
        {
            ExceptionDispatchInfo.Throw(error);
        }

        var canceled = _readCancelRequested;
        _readCancelRequested = false;
        var buffer = _segments.Head is null || HeadPosition == _committed ? default : _segments.Readable;
        return new ReadResult(buffer, canceled, isCompleted: _writerCompleted);
    }

    private void ThrowIfReaderCompleted()
    {
        if (_readerCompleted)
        {
            throw new InvalidOperationException("Reading is not allowed after the reader was completed.");
        }
    }

    private void OnReadTokenCanceled() => _readCancellation.OnCanceled(_lock, ref _read, _options.ReaderScheduler);

    // ---- The writer: the connection's receive loop ----

    public Memory<byte> GetMemory(int sizeHint = 0) => _segments.TryGetMemory(sizeHint, out var memory) ? memory : EnsureWritable(sizeHint);

    public Span<byte> GetSpan(int sizeHint = 0) => GetMemory(sizeHint).Span;

    public void Advance(int bytes)
    {
        if (_writerCompleted)
        {
            return;
        }

        _segments.Advance(bytes);
    }

    /// <summary>Makes what was written readable; pauses while the reader has PauseWriterThreshold bytes or more left to examine.</summary>
    public ValueTask<FlushResult> FlushAsync()
    {
        PipeWaiter wake;
        ValueTask<FlushResult> result;
        lock (_lock)
        {
            if (_writerCompleted)
            {
                throw new InvalidOperationException("Flushing is not allowed after the writer was completed.");
            }

            wake = CommitLocked();
            if (_readerCompleted)
            {
                // Nobody will read it: what was written goes, and the writer learns the input is over.
                ReturnAllLocked();
                result = new(new FlushResult(isCanceled: false, isCompleted: true));
            }
            else if (PipeWaiter.FlushesAtOnce(ref _flush, ref _flushCancelRequested, _options.PauseWriterThreshold, _committed - _examined, out var flushed))
            {
                result = new(flushed);
            }
            else
            {
                result = new(this, _flush.Token);
            }
        }

        wake.Run(_options.ReaderScheduler);
        return result;
    }

    public void CancelPendingFlush() => PipeWaiter.CancelPending(_lock, ref _flush, ref _flushCancelRequested, _options.WriterScheduler);

    /// <summary>The input ends: with <paramref name="error"/>, every read from now on throws it, as a Pipe's do.</summary>
    public void CompleteWriter(Exception? error = null)
    {
        PipeWaiter wake;
        lock (_lock)
        {
            if (_writerCompleted)
            {
                return;
            }

            wake = CommitLocked();
            _writerCompleted = true;
            _writerError = error;
            _readable = true;
            _segments.DropWritable();
            if (_readerCompleted)
            {
                ReturnAllLocked();
            }

            // A read still pending ends too, even after the reader's Complete (a handler that had not
            // awaited its last read), as a Pipe's does: otherwise it would wait forever.
            if (!wake.HasContinuation && _read.IsWaiting)
            {
                wake = _read.Complete();
            }
        }

        wake.Run(_options.ReaderScheduler);
    }

    /// <summary>Both sides completed: ready for the pooled connection's next use.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            if (!_writerCompleted || !_readerCompleted)
            {
                throw new InvalidOperationException("An input pipe can only be reset once both of its sides are completed.");
            }

            ReturnAllLocked();
            _read.Invalidate();
            _flush.Invalidate();
            _readCancellation.Reset();
            _writerCompleted = _readerCompleted = false;
            _writerError = null;
            _readCancelRequested = _flushCancelRequested = false;
            _readable = false;
            _committed = _examined = 0;
        }
    }

    private Memory<byte> EnsureWritable(int sizeHint)
    {
        lock (_lock)
        {
            if (_writerCompleted)
            {
                throw new InvalidOperationException("Writing is not allowed after the writer was completed.");
            }

            // Once all was consumed, the next first segment starts where the flushed bytes end.
            return _segments.EnsureWritable(_options, sizeHint, firstRunningIndex: _committed);
        }
    }

    /// <summary>Makes what was written readable; returns the reader to wake, if it waits.</summary>
    private PipeWaiter CommitLocked()
    {
        var committed = _segments.Commit();
        if (committed == 0)
        {
            return default;
        }

        _committed += committed;
        _readable = true;
        return _read.IsWaiting ? _read.Complete() : default;
    }

    private void ReturnAllLocked()
    {
        _segments.ReturnAll();
        // Dropped bytes count as examined: nothing is left to hold the writer back.
        _examined = _committed;
    }

    // ---- The two awaitables: the application's read and the receive loop's flush ----

    ReadResult IValueTaskSource<ReadResult>.GetResult(short token)
    {
        CancellationTokenRegistration registration;
        CancellationToken canceledBy;
        var result = default(ReadResult);
        Exception? failure = null;
        lock (_lock)
        {
            registration = _readCancellation.End(ref _read, token, out canceledBy);
            if (!canceledBy.IsCancellationRequested)
            {
                try
                {
                    result = GetReadResultLocked();
                }
                catch (Exception ex)
                {
                    // The writer's error: thrown below, once the registration is gone.
                    failure = ex;
                }
            }
        }

        // Outside the lock: disposing waits for a callback that is running, and the callback takes the lock.
        registration.Dispose();
        if (canceledBy.IsCancellationRequested)
        {
            throw new OperationCanceledException("The read was canceled by its token.", canceledBy);
        }

        if (failure is not null)
        {
            ExceptionDispatchInfo.Throw(failure);
        }

        return result;
    }

    ValueTaskSourceStatus IValueTaskSource<ReadResult>.GetStatus(short token)
    {
        lock (_lock)
        {
            // A read that will throw the writer's error says so.
            return _read.GetStatus(token, faulted: _writerCompleted && _writerError is not null);
        }
    }

    void IValueTaskSource<ReadResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => PipeWaiter.OnCompleted(_lock, ref _read, continuation, state, token, flags, _options.ReaderScheduler);

    FlushResult IValueTaskSource<FlushResult>.GetResult(short token)
    {
        lock (_lock)
        {
            _flush.End(token);
            var canceled = _flushCancelRequested;
            _flushCancelRequested = false;
            return new FlushResult(canceled, isCompleted: _readerCompleted);
        }
    }

    ValueTaskSourceStatus IValueTaskSource<FlushResult>.GetStatus(short token) => _flush.GetStatus(token);

    /// <summary>
    /// The transport's own wait for a flush that <see cref="FlushAsync"/> left waiting: <paramref name="continuation"/>
    /// runs with <paramref name="state"/> at its end, as its awaiter's UnsafeOnCompleted would, with no delegate made for it.
    /// </summary>
    public void UnsafeOnFlushCompleted(Action<object?> continuation, object state)
        => ((IValueTaskSource<FlushResult>)this).OnCompleted(continuation, state, _flush.Token, ValueTaskSourceOnCompletedFlags.None);

    /// <summary>The result of the flush whose continuation <see cref="UnsafeOnFlushCompleted"/> registered, once it ran (once).</summary>
    public FlushResult TakeFlushResult() => ((IValueTaskSource<FlushResult>)this).GetResult(_flush.Token);

    void IValueTaskSource<FlushResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => PipeWaiter.OnCompleted(_lock, ref _flush, continuation, state, token, flags, _options.WriterScheduler);
}
