using System.Buffers;

namespace Transport.Tests.Infrastructure;

/// <summary>
/// A memory pool of fixed-size blocks that counts the blocks not yet given back, and fails a test that
/// asks it for more than a block or gives a block back twice: for the connection's pipes, which must
/// hold no memory once idle and return each block once.
/// </summary>
internal sealed class CountingMemoryPool(int maxBufferSize) : MemoryPool<byte>
{
    private int _outstanding;

    public int Outstanding => Volatile.Read(ref _outstanding);

    public override int MaxBufferSize => maxBufferSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        Assert.True(minBufferSize <= maxBufferSize, $"asked the pool for {minBufferSize} bytes, over its {maxBufferSize}");
        Interlocked.Increment(ref _outstanding);
        return new Block(this, new byte[maxBufferSize]);
    }

    protected override void Dispose(bool disposing)
    {
    }

    private sealed class Block(CountingMemoryPool pool, byte[] array) : IMemoryOwner<byte>
    {
        private int _returned;

        public Memory<byte> Memory => array;

        public void Dispose()
        {
            Assert.Equal(0, Interlocked.Exchange(ref _returned, 1));
            Interlocked.Decrement(ref pool._outstanding);
        }
    }
}
